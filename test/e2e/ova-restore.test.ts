import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { getRestorePoint, importOvaRestorePoint } from '../../src/repository';
import { startVSphereRestore } from '../../src/client/restore';
import { sha256File } from '../helpers/env';
import { buildOva } from '../helpers/ova';
import { closeVSphereLab, localFlatFile, openVSphereLab, type VSphereLab } from '../helpers/vsphere';

const MiB = 1024 * 1024;
let lab: VSphereLab;
let workDir: string;

describe('an OVA imports and restores to vSphere byte for byte (real Temporal + vcsim)', () => {
  before(async () => {
    lab = await openVSphereLab('ova');
    workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmrestore-ova-e2e-'));
  });
  after(async () => {
    await closeVSphereLab(lab);
    await fs.rm(workDir, { recursive: true, force: true });
  });

  it('streamOptimized disks from an OVA land on the datastore identical to qemu-img convert -O raw of them', async () => {
    const name = `ova-${randomBytes(3).toString('hex')}`;
    const built = await buildOva(workDir, {
      name,
      cpus: 2,
      memoryMiB: 1024,
      network: 'VM Network',
      firmware: 'bios',
      disks: [
        Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(4 * MiB), randomBytes(MiB)]),
        Buffer.concat([Buffer.alloc(2 * MiB), randomBytes(2 * MiB)]),
      ],
    });
    const repo = lab.env.config.repository.path;
    const { restorePointId } = await importOvaRestorePoint(repo, built.ova);
    const rp = await getRestorePoint(repo, restorePointId);
    assert.deepEqual(
      rp.vm.disks.map((d) => [d.capacityBytes, d.provisioning]),
      [
        [8 * MiB, 'thin'],
        [4 * MiB, 'thin'],
      ],
    );

    const vmName = `${name}-restored`;
    const handle = await startVSphereRestore(
      lab.env.client,
      { restorePointId, vmName, transport: 'nbd' },
      { taskQueue: lab.env.taskQueue },
    );
    const result = await handle.result();
    const dc = await lab.vs.datacenter('DC0');
    const vm = await lab.vs.findVmByName(dc, result.vmName);
    assert.ok(vm, `VM ${result.vmName} exists`);
    try {
      const cfg = await vm.config();
      assert.equal(cfg.cpus, 2);
      assert.equal(cfg.memoryMiB, 1024);
      assert.deepEqual(
        cfg.nics.map((n) => n.network),
        ['VM Network'],
      );
      assert.equal(cfg.disks.length, 2);
      for (const [i, disk] of cfg.disks.entries()) {
        assert.equal(disk.capacityBytes, rp.vm.disks[i].capacityBytes, `disk ${i} capacity`);
        assert.equal(await sha256File(localFlatFile(disk.fileName)), built.diskSha256[i], `disk ${i} bytes on the datastore`);
      }
    } finally {
      await vm.destroy();
    }
  });
});
