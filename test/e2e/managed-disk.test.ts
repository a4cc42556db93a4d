import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { PageBlobClient } from '@azure/storage-blob';
import { attachedDiskDevice, findLunDevice, lunOfDisk } from '../../src/azure/attached-disks';
import { parseManagedDiskId, withManagedDiskRead } from '../../src/azure/managed-disk-read';
import { buildFixedVhdFooter, parseVhdFooter } from '../../src/azure/vhd';
import { labConfig, labDir, labUp, readLabState } from '../../src/lab';
import { buildLinuxDiskImage } from '../../src/lab/images/linux-image';
import { prepareLinuxDisk, readGuestFile } from '../../src/guest/linux/prep';
import type { ArmClients } from '../../src/lab/armsim';
import { copyRangesToSparseFile } from '../../src/sparse-file';
import { labArm, labAzure, labContainer } from '../helpers/azure';

const MiB = 1024 * 1024;
const DATA_SIZE = 4 * MiB;
const run = randomBytes(3).toString('hex');

/** Offsets of single written sectors with small gaps between them (page ranges the import reads together). */
const SCATTERED = Array.from({ length: 16 }, (_, i) => 1.25 * MiB + i * 32 * 1024);

/** What a disk's data looks like at import: written regions in an otherwise sparse 4 MiB disk. */
function originalData(): Buffer {
  const b = Buffer.alloc(DATA_SIZE);
  randomBytes(MiB).copy(b, 0);
  randomBytes(512 * 1024).copy(b, 3 * MiB);
  for (const off of SCATTERED) randomBytes(512).copy(b, off);
  return b;
}

/** GET of a SAS URL with the lab CA, answering status, error code and body. */
function sasGet(url: string, range?: string): Promise<{ status: number; code?: string; body: Buffer; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca: fs.readFileSync(labAzure().caCertPath), headers: range ? { range } : {}, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          code: res.headers['x-ms-error-code'] as string | undefined,
          body: Buffer.concat(chunks),
          headers: res.headers,
        }),
      );
    });
    req.on('error', reject);
  });
}

function rejectsWith(code: string, status: number, message?: RegExp) {
  return (err: unknown): boolean => {
    const e = err as { code?: string; statusCode?: number; message: string };
    assert.equal(e.code, code, e.message);
    assert.equal(e.statusCode, status, e.message);
    if (message) assert.match(e.message, message);
    return true;
  };
}

describe('managed disks in the lab keep their own data (Azure semantics)', () => {
  let arm: ArmClients;
  let rg: string;
  let location: string;
  let blob: PageBlobClient;
  let original: Buffer;
  let diskId: string;
  const diskName = `md-${run}`;
  const osDiskName = `md-${run}-os`;
  const vmName = `md-${run}-vm`;
  const nicName = `md-${run}-nic`;
  const linuxName = `md-${run}-linux`;

  const readWhole = (id: string) =>
    withManagedDiskRead(arm, id, (r) => r.read(0, r.vhdSize), { caCertPath: labAzure().caCertPath, durationSeconds: 300 });

  before(async () => {
    await labUp();
    arm = labArm();
    const a = labAzure();
    rg = a.resourceGroup;
    location = a.location;
    original = originalData();
    await labContainer().createIfNotExists();
    blob = labContainer().getPageBlobClient(`${diskName}.vhd`);
    await blob.create(DATA_SIZE + 512);
    await blob.uploadPages(original.subarray(0, MiB), 0, MiB);
    await blob.uploadPages(original.subarray(3 * MiB, 3.5 * MiB), 3 * MiB, 512 * 1024);
    for (const off of SCATTERED) await blob.uploadPages(original.subarray(off, off + 512), off, 512);
    const footer = buildFixedVhdFooter({ currentSize: DATA_SIZE, uuid: randomBytes(16) });
    await blob.uploadPages(footer, DATA_SIZE, 512);
    const disk = await arm.compute.disks.createOrUpdate(rg, diskName, {
      location,
      sku: { name: 'Standard_LRS' },
      creationData: { createOption: 'Import', sourceUri: blob.url, storageAccountId: a.storageAccountId },
    });
    diskId = disk.id!;
    assert.equal(disk.diskSizeBytes, DATA_SIZE);
  });

  after(async () => {
    await arm.compute.virtualMachines.delete(rg, vmName).catch(() => undefined);
    await arm.network.networkInterfaces.beginDeleteAndWait(rg, nicName).catch(() => undefined);
    for (const d of [diskName, osDiskName, linuxName]) {
      await arm.compute.disks.revokeAccess(rg, d).catch(() => undefined);
      await arm.compute.disks.delete(rg, d).catch(() => undefined);
    }
    await blob?.deleteIfExists();
    await labContainer().getPageBlobClient(`${linuxName}.vhd`).deleteIfExists();
  });

  it('copies the blob at import, sparsely, so later blob writes do not reach the disk', async () => {
    const store = path.join(labDir(), 'armsim', 'disks', `${(await arm.compute.disks.get(rg, diskName)).uniqueId}.img`);
    const st = fs.statSync(store);
    assert.equal(st.size, DATA_SIZE);
    // 1.5 MiB written plus 16 sectors, each in a block of its own: the gaps between them stay holes.
    assert.ok(
      st.blocks * 512 <= 1.5 * MiB + 16 * 4096 + 64 * 1024,
      `the store holds only what was written, allocated ${st.blocks * 512} bytes`,
    );

    await blob.uploadPages(Buffer.alloc(MiB, 0xee), 0, MiB);
    await blob.clearPages(3 * MiB, 512 * 1024);
    assert.equal((await blob.downloadToBuffer(0, 16)).toString('hex'), 'ee'.repeat(16), 'the blob was overwritten');

    const vhd = await readWhole(diskId);
    assert.equal(vhd.length, DATA_SIZE + 512);
    assert.ok(vhd.subarray(0, DATA_SIZE).equals(original), 'the managed disk still holds the bytes it was imported with');
    const footer = parseVhdFooter(vhd.subarray(DATA_SIZE));
    assert.equal(footer.cookie, 'conectix');
    assert.equal(footer.currentSize, DATA_SIZE);
    assert.equal((await arm.compute.disks.get(rg, diskName)).diskState, 'Unattached', 'the helper revoked its access');
  });

  it('lists the written pages of the export (Get Page Ranges), and a ranged copy reads only them, byte for byte', async () => {
    const file = path.join(os.tmpdir(), `md-${run}-ranged.raw`);
    try {
      const { ranges, moved } = await withManagedDiskRead(
        arm,
        diskId,
        async (r) => ({ ranges: await r.dataRanges(), moved: await copyRangesToSparseFile(r, file) }),
        { caCertPath: labAzure().caCertPath, durationSeconds: 300 },
      );
      // Every written byte lies in a listed range; the 1 MiB hole after the first MiB and the tail are not listed.
      const covered = (off: number) => ranges.some((x) => off >= x.offset && off < x.offset + x.length);
      for (const off of [0, MiB - 1, 3 * MiB, 3.5 * MiB - 1, ...SCATTERED]) assert.ok(covered(off), `byte ${off} is in a listed range`);
      for (const off of [1.1 * MiB, 2.5 * MiB, 3.75 * MiB])
        assert.ok(!covered(Math.floor(off)), `byte ${off} (never written) is not listed`);
      assert.ok(
        ranges.every((x) => x.offset + x.length <= DATA_SIZE),
        'the footer is not data',
      );
      const listed = ranges.reduce((a, x) => a + x.length, 0);
      assert.equal(moved, listed, 'the copy moved exactly the listed bytes');
      // 1.5 MiB written plus 16 sectors, listed in blocks of at most 64 KiB each.
      assert.ok(moved <= 1.5 * MiB + 16 * 64 * 1024, `moved ${moved} of ${DATA_SIZE} bytes`);
      const copy = fs.readFileSync(file);
      assert.equal(copy.length, DATA_SIZE);
      assert.ok(copy.equals(original), 'the ranged copy is the disk');
    } finally {
      fs.rmSync(file, { force: true });
    }
  });

  it('serves a read SAS while access is granted and refuses it after revoke, on a bad signature and once expired', async () => {
    const { accessSAS } = await arm.compute.disks.grantAccess(rg, diskName, { access: 'Read', durationInSeconds: 600 });
    assert.ok(accessSAS);
    assert.match(accessSAS, /\/abcd\?sv=2018-03-28&sr=b&si=[0-9a-f-]+&sig=/);
    assert.equal((await arm.compute.disks.get(rg, diskName)).diskState, 'ActiveSAS');

    const across = await sasGet(accessSAS, `bytes=${DATA_SIZE - 16}-${DATA_SIZE + 7}`);
    assert.equal(across.status, 206);
    assert.equal(across.headers['content-range'], `bytes ${DATA_SIZE - 16}-${DATA_SIZE + 7}/${DATA_SIZE + 512}`);
    assert.ok(across.body.subarray(0, 16).equals(original.subarray(DATA_SIZE - 16)));
    assert.equal(across.body.subarray(16).toString('latin1'), 'conectix', 'the range runs on into the VHD footer');
    assert.equal((await sasGet(accessSAS, `bytes=${DATA_SIZE + 512}-`)).status, 416);

    const tampered = accessSAS.replace(/sig=[^&]+/, `sig=${encodeURIComponent(randomBytes(32).toString('base64'))}`);
    const bad = await sasGet(tampered, 'bytes=0-15');
    assert.equal(bad.status, 403);
    assert.equal(bad.code, 'AuthenticationFailed');

    const again = await arm.compute.disks.grantAccess(rg, diskName, { access: 'Read', durationInSeconds: 600 });
    assert.equal((await sasGet(accessSAS, 'bytes=0-15')).status, 403, 'a new grant replaces the previous SAS');
    assert.ok((await sasGet(again.accessSAS!, 'bytes=0-15')).body.equals(original.subarray(0, 16)));

    // While exported the disk cannot be deleted (attaching is refused too, see below).
    await assert.rejects(arm.compute.disks.delete(rg, diskName), rejectsWith('OperationNotAllowed', 409, /ActiveSAS/));

    await arm.compute.disks.revokeAccess(rg, diskName);
    assert.equal((await arm.compute.disks.get(rg, diskName)).diskState, 'Unattached');
    const revoked = await sasGet(again.accessSAS!, 'bytes=0-15');
    assert.equal(revoked.status, 403);
    assert.equal(revoked.code, 'AuthenticationFailed');

    const short = await arm.compute.disks.grantAccess(rg, diskName, { access: 'Read', durationInSeconds: 1 });
    assert.equal((await sasGet(short.accessSAS!, 'bytes=0-15')).status, 206);
    await new Promise((r) => setTimeout(r, 1200));
    const expired = await sasGet(short.accessSAS!, 'bytes=0-15');
    assert.equal(expired.status, 403);
    assert.equal(expired.code, 'AuthenticationFailed');
    assert.equal((await arm.compute.disks.get(rg, diskName)).diskState, 'Unattached', 'an expired grant leaves ActiveSAS');

    await assert.rejects(
      arm.compute.disks.grantAccess(rg, diskName, { access: 'Write', durationInSeconds: 60 }),
      rejectsWith('OperationNotAllowed', 409, /Upload/),
    );
  });

  it('revokes access even when reading fails, and never puts the SAS query in the error', async () => {
    let seen: string | undefined;
    await assert.rejects(
      withManagedDiskRead(
        arm,
        diskId,
        async (r) => {
          seen = r.location;
          await r.read(DATA_SIZE, 1024);
        },
        { caCertPath: labAzure().caCertPath },
      ),
      (err: Error) => {
        assert.match(err.message, /outside managed disk/);
        assert.doesNotMatch(err.message, /sig=|si=/);
        return true;
      },
    );
    assert.ok(seen && !seen.includes('?'), `reader.location is the URL without its query: ${seen}`);
    assert.equal((await arm.compute.disks.get(rg, diskName)).diskState, 'Unattached');
    assert.throws(() => parseManagedDiskId('/subscriptions/x/disks/y'), /not a managed disk id/);
  });

  it('shows an attached disk to the running VM as its LUN device, and a write there changes the disk, not the blob', async () => {
    const a = labAzure();
    const helper = labConfig(readLabState()).azure!.helpers[location];
    assert.equal(helper.deviceRoot, path.join(a.deviceRoot!, a.helperVmName), 'the lab config points the helper at its device folder');
    const deviceRoot = path.join(a.deviceRoot!, vmName);

    const os = await arm.compute.disks.createOrUpdate(rg, osDiskName, {
      location,
      osType: 'Linux',
      diskSizeGB: 1,
      creationData: { createOption: 'Empty' },
    });
    const nic = await arm.network.networkInterfaces.beginCreateOrUpdateAndWait(rg, nicName, {
      location,
      ipConfigurations: [{ name: 'ipconfig1', subnet: { id: a.subnetId } }],
    });
    await arm.compute.virtualMachines.createOrUpdate(rg, vmName, {
      location,
      hardwareProfile: { vmSize: 'Standard_B1s' },
      storageProfile: { osDisk: { osType: 'Linux', createOption: 'Attach', managedDisk: { id: os.id } } },
      networkProfile: { networkInterfaces: [{ id: nic.id }] },
    });
    assert.ok(fs.existsSync(path.join(deviceRoot, 'root')), 'the running VM sees its OS disk');

    // A disk with an active SAS cannot be attached.
    await arm.compute.disks.grantAccess(rg, diskName, { access: 'Read', durationInSeconds: 600 });
    await assert.rejects(
      arm.compute.virtualMachines.attachDetachDataDisks(rg, vmName, { dataDisksToAttach: [{ diskId, lun: 3 }] }),
      rejectsWith('OperationNotAllowed', 409, /ActiveSAS/),
    );
    await arm.compute.disks.revokeAccess(rg, diskName);

    await arm.compute.virtualMachines.attachDetachDataDisks(rg, vmName, { dataDisksToAttach: [{ diskId, lun: 3 }] });
    assert.equal(lunOfDisk(await arm.compute.virtualMachines.get(rg, vmName), diskId.toUpperCase()), 3);
    const { lun, device } = await attachedDiskDevice(arm, { resourceGroup: rg, vmName, deviceRoot }, diskId, { timeoutMs: 2000 });
    assert.equal(lun, 3);
    assert.equal(device, path.join(deviceRoot, 'scsi1', 'lun3'));
    assert.ok(fs.readFileSync(device).equals(original), 'the device holds the managed disk bytes');
    await assert.rejects(
      arm.compute.disks.grantAccess(rg, diskName, { access: 'Read', durationInSeconds: 60 }),
      rejectsWith('Conflict', 409, /attached to running VM/),
    );

    const edit = randomBytes(4096);
    const fd = fs.openSync(device, 'r+');
    fs.writeSync(fd, edit, 0, edit.length, 2 * MiB);
    fs.closeSync(fd);

    await arm.compute.virtualMachines.attachDetachDataDisks(rg, vmName, { dataDisksToDetach: [{ diskId }] });
    assert.equal(fs.existsSync(device), false, 'detaching removes the device');
    await assert.rejects(findLunDevice(3, { deviceRoot, timeoutMs: 300 }), /no device for LUN 3/);

    const vhd = await readWhole(diskId);
    assert.ok(vhd.subarray(2 * MiB, 2 * MiB + edit.length).equals(edit), 'the write through the device reached the managed disk');
    assert.ok(vhd.subarray(0, MiB).equals(original.subarray(0, MiB)));
    const blobBytes = await blob.downloadToBuffer(2 * MiB, edit.length);
    assert.ok(blobBytes.equals(Buffer.alloc(edit.length)), 'the source blob did not change');

    await arm.compute.virtualMachines.deallocate(rg, vmName);
    assert.equal(fs.existsSync(deviceRoot), false, 'a deallocated VM has no devices');
  });

  it('Linux preparation through the attached device edits the managed disk and leaves the blob as uploaded', async () => {
    const a = labAzure();
    const deviceRoot = path.join(a.deviceRoot!, vmName);
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'managed-disk-test-'));
    try {
      const size = 64 * MiB;
      const image = await buildLinuxDiskImage(path.join(tmp, 'disk0.img'), {
        sizeBytes: size,
        scheme: 'mbr',
        hostname: 'attached',
        networkStyle: 'interfaces',
        firewall: 'iptables',
        usedMiB: 4,
      });
      const raw = fs.readFileSync(image.imagePath);
      const linuxBlob = labContainer().getPageBlobClient(`${linuxName}.vhd`);
      await linuxBlob.create(size + 512);
      for (let off = 0; off < size; off += 4 * MiB) {
        const chunk = raw.subarray(off, off + 4 * MiB);
        if (chunk.some((x) => x !== 0)) await linuxBlob.uploadPages(chunk, off, chunk.length);
      }
      await linuxBlob.uploadPages(buildFixedVhdFooter({ currentSize: size, uuid: randomBytes(16) }), size, 512);
      const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
      const uploaded = sha(raw);
      const disk = await arm.compute.disks.createOrUpdate(rg, linuxName, {
        location,
        sku: { name: 'Standard_LRS' },
        osType: 'Linux',
        creationData: { createOption: 'Import', sourceUri: linuxBlob.url, storageAccountId: a.storageAccountId },
      });

      await arm.compute.virtualMachines.start(rg, vmName);
      await arm.compute.virtualMachines.attachDetachDataDisks(rg, vmName, { dataDisksToAttach: [{ diskId: disk.id!, lun: 0 }] });
      const { device } = await attachedDiskDevice(arm, { resourceGroup: rg, vmName, deviceRoot }, disk.id!);
      const changes = await prepareLinuxDisk(device);
      assert.ok(changes.length > 0, 'the preparation changed the guest');
      const fstab = await readGuestFile(device, image.rootPartitionOffset, '/etc/fstab');
      await arm.compute.virtualMachines.attachDetachDataDisks(rg, vmName, { dataDisksToDetach: [{ diskId: disk.id! }] });

      const managed = await withManagedDiskRead(arm, disk.id!, (r) => r.read(0, r.dataSize), { caCertPath: a.caCertPath });
      assert.notEqual(sha(managed), uploaded, 'the managed disk holds the prepared guest');
      fs.writeFileSync(path.join(tmp, 'managed.img'), managed);
      assert.equal(await readGuestFile(path.join(tmp, 'managed.img'), image.rootPartitionOffset, '/etc/fstab'), fstab);
      assert.equal(sha(await linuxBlob.downloadToBuffer(0, size)), uploaded, 'the blob is still the unprepared upload');
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('removes the disk store when the disk is deleted', async () => {
    const store = path.join(labDir(), 'armsim', 'disks', `${(await arm.compute.disks.get(rg, diskName)).uniqueId}.img`);
    assert.ok(fs.existsSync(store));
    await arm.compute.disks.delete(rg, diskName);
    assert.equal(fs.existsSync(store), false);
  });
});
