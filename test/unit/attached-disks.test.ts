import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { findLunDevice, lunDeviceCandidates, lunOfDisk } from '../../src/azure/attached-disks';
import { AZURE_DEVICE_ROOT } from '../../src/config';

const disk = (name: string) => `/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/${name}`;

describe('finding an attached data disk by its LUN', () => {
  let root: string;
  before(() => {
    root = fs.mkdtempSync(path.join(os.tmpdir(), 'attached-disks-'));
  });
  after(() => fs.rmSync(root, { recursive: true, force: true }));

  it('takes the LUN from the storage profile, matching the disk id case-insensitively', () => {
    const vm = {
      name: 'helper',
      storageProfile: {
        dataDisks: [
          { lun: 0, createOption: 'Attach' as const, managedDisk: { id: disk('a') } },
          { lun: 5, createOption: 'Attach' as const, managedDisk: { id: disk('B') } },
        ],
      },
    };
    assert.equal(lunOfDisk(vm, disk('b').toUpperCase()), 5);
    assert.throws(
      () => lunOfDisk(vm, disk('c')),
      /disks\/c' is not attached to VM 'helper' as a data disk \(attached: lun 0: .*disks\/a, lun 5/,
    );
  });

  it('looks under scsi1/lun<N> (Azure udev rules), then data/by-lun/<N> (azure-vm-utils)', async () => {
    assert.deepEqual(lunDeviceCandidates(2), [`${AZURE_DEVICE_ROOT}/scsi1/lun2`, `${AZURE_DEVICE_ROOT}/data/by-lun/2`]);
    const img = path.join(root, 'disk.img');
    fs.writeFileSync(img, Buffer.alloc(4096));
    fs.mkdirSync(path.join(root, 'data', 'by-lun'), { recursive: true });
    fs.symlinkSync(img, path.join(root, 'data', 'by-lun', '2'));
    assert.equal(await findLunDevice(2, { deviceRoot: root, timeoutMs: 0 }), path.join(root, 'data', 'by-lun', '2'));
    fs.mkdirSync(path.join(root, 'scsi1'), { recursive: true });
    fs.symlinkSync(img, path.join(root, 'scsi1', 'lun2'));
    assert.equal(await findLunDevice(2, { deviceRoot: root, timeoutMs: 0 }), path.join(root, 'scsi1', 'lun2'));
  });

  it('waits for a device that appears after the attach, and names what it looked for when none does', async () => {
    const late = path.join(root, 'scsi1', 'lun7');
    setTimeout(() => fs.symlinkSync(path.join(root, 'disk.img'), late), 300);
    assert.equal(await findLunDevice(7, { deviceRoot: root, timeoutMs: 5000 }), late);
    await assert.rejects(findLunDevice(9, { deviceRoot: root, timeoutMs: 100 }), /no device for LUN 9 appeared under .*scsi1\/lun9/);
    fs.mkdirSync(path.join(root, 'scsi1', 'lun8'));
    await assert.rejects(findLunDevice(8, { deviceRoot: root, timeoutMs: 0 }), /neither a block device nor a disk image/);
    await assert.rejects(findLunDevice(64, { deviceRoot: root }), /LUN 64 is not 0-63/);
  });
});
