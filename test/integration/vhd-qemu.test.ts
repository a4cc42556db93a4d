import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, fstatSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildFixedVhdFooter, parseVhdFooter, uuidFromRestoreId, vhdGeometry, vhdVirtualSize } from '../../src/azure/vhd';
import { noTool } from '../helpers/requirements';
import { GiB, MiB } from '../../src/domain/units';

const noQemuImg = noTool('qemu-img');

function qemuInfo(args: string[]): { 'virtual-size': number; format: string } {
  const out = execFileSync('qemu-img', ['info', '--output=json', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return JSON.parse(out) as {
    'virtual-size': number;
    format: string;
  };
}

function readTail(file: string): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(512);
    readSync(fd, buf, 0, 512, fstatSync(fd).size - 512);
    return buf;
  } finally {
    closeSync(fd);
  }
}

describe('qemu-img writes the CHS geometry we compute', { skip: noQemuImg }, () => {
  it('matches the geometry qemu-img writes for the same sizes', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmrs-vhd-'));
    try {
      for (const size of ['20M', '100M', '1G', '4G', '40G', '127G']) {
        const file = path.join(dir, `q-${size}.vhd`);
        execFileSync('qemu-img', ['create', '-q', '-f', 'vpc', '-o', 'subformat=fixed', file, size]);
        const f = parseVhdFooter(readTail(file));
        assert.equal(f.checksumValid, true, `${size}: qemu footer checksum`);
        assert.equal(f.diskType, 2);
        assert.deepEqual(vhdGeometry(f.currentSize), f.geometry, `${size}: geometry of ${f.currentSize} bytes`);
        rmSync(file);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('qemu-img reads our raw + footer file', { skip: noQemuImg }, () => {
  let dir = '';
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmrs-vhd-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const capacity of [20 * MiB + 3 * 512, 1003 * 12 * 17 * 512, 3 * GiB + 5 * 512]) {
    it(`as format vpc with the right virtual size (capacity ${capacity})`, () => {
      const virtualSize = vhdVirtualSize(capacity);
      const file = path.join(dir, `d-${capacity}.vhd`);
      const fd = openSync(file, 'w');
      try {
        ftruncateSync(fd, virtualSize);
        writeSync(fd, buildFixedVhdFooter({ currentSize: virtualSize, uuid: uuidFromRestoreId(`r${capacity}`) }), 0, 512, virtualSize);
      } finally {
        closeSync(fd);
      }
      const g = vhdGeometry(virtualSize);
      const chsBytes = g.cylinders * g.heads * g.sectorsPerTrack * 512;
      // QEMU trusts CHS for creator apps it does not know ('vmrs'), as Virtual PC did.
      const byChs = qemuInfo(['-f', 'vpc', file]);
      assert.equal(byChs.format, 'vpc');
      assert.equal(byChs['virtual-size'], chsBytes);
      // Azure and Hyper-V use the footer's current size; QEMU does too when told to.
      const bySize = qemuInfo(['--image-opts', `driver=vpc,force_size_calc=current_size,file.filename=${file}`]);
      assert.equal(bySize.format, 'vpc');
      assert.equal(bySize['virtual-size'], virtualSize);
      // Without the footer the same bytes are not a VHD (a control for the checks above). QEMU's format
      // probe only spots dynamic VHDs, whose header copy sits at offset 0, so -f vpc is always given.
      const fd2 = openSync(file, 'r+');
      ftruncateSync(fd2, virtualSize);
      closeSync(fd2);
      assert.throws(() => qemuInfo(['-f', 'vpc', file]), /invalid VPC image|Could not open/);
    });
  }
});
