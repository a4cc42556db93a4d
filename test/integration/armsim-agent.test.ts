import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { noFuse as requireFuse } from '../helpers/requirements';
import { AgentProbe } from '../../src/lab/armsim/agent';
import { PartitionCopy, ntfsReadFile, ntfsResolvePath, ntfsWriteFile } from '../../src/guest/windows/ntfs';
import { readPartitionTable } from '../../src/guest/disk/partition';
import { setHiveValues } from '../../src/guest/windows/regf';
import { buildWindowsDiskImage } from '../../src/lab/images/windows-image';
import { prepareWindowsDisk, readAgentStaging } from '../../src/guest/windows/prep';
import { seededStream } from '../../src/lab/images/seeded';

const MiB = 1024 * 1024;
const noFuse = requireFuse();

/** Deletes the RunOnce value from the image's SOFTWARE hive, leaving the staged installer in place. */
async function dropRunOnce(image: string, dir: string): Promise<void> {
  const ntfs = (await readPartitionTable(image)).partitions.find((p) => p.type === 'ntfs')!;
  const copy = await PartitionCopy.extract(image, ntfs.startBytes, ntfs.sizeBytes, join(dir, 'part.img'));
  const stored = (await ntfsResolvePath(copy.partPath, 'Windows/System32/config/SOFTWARE'))!;
  const hive = join(dir, 'SOFTWARE');
  await fsp.writeFile(hive, (await ntfsReadFile(copy.partPath, stored))!);
  assert.ok(await setHiveValues(hive, [{ keyPath: 'Microsoft\\Windows\\CurrentVersion\\RunOnce', name: 'AzureVmAgent', value: null }]));
  await ntfsWriteFile(copy.partPath, hive, stored);
  await copy.writeBack();
  await fsp.rm(copy.partPath);
}

describe("the ARM simulator's VM agent check reads the OS disk", { skip: noFuse }, () => {
  let dir: string;
  let agent: string;
  const disks = { pathOf: (d: { uniqueId: string }) => join(dir, `${d.uniqueId}.img`) };

  before(async () => {
    dir = await fsp.mkdtemp(join(os.tmpdir(), 'vmrestore-agentprobe-'));
    agent = join(dir, 'WindowsAzureVmAgent.msi');
    await fsp.writeFile(agent, seededStream('agent')(64 * 1024));
  });
  after(() => fsp.rm(dir, { recursive: true, force: true }));

  it('Ready only with the installer and its RunOnce entry; re-checked when the disk changes, cached otherwise', async () => {
    const disk = { uniqueId: 'win-os' };
    const image = disks.pathOf(disk);
    await buildWindowsDiskImage(image, { sizeBytes: 128 * MiB, scheme: 'mbr', hostname: 'probe01', usedMiB: 4 });
    const probe = new AgentProbe(disks, join(dir, 'work'));

    const unprepared = await probe.checkDisk(disk);
    assert.equal(unprepared.ready, false);
    assert.match(unprepared.reason!, /no agent installer is staged/);

    await prepareWindowsDisk(image, { agentInstallerPath: agent });
    const t0 = Date.now();
    const prepared = await probe.checkDisk(disk);
    const firstMs = Date.now() - t0;
    assert.equal(prepared.ready, true, prepared.reason);
    assert.equal(prepared.staging!.installerBytes, 64 * 1024);
    assert.match(prepared.staging!.runOnce!, /^msiexec\.exe \/i "C:\\Windows\\AzureAgent\\WindowsAzureVmAgent\.msi"/);

    const t1 = Date.now();
    assert.equal((await probe.checkDisk(disk)).ready, true);
    const cachedMs = Date.now() - t1;
    console.log(`agent check: ${firstMs} ms first, ${cachedMs} ms cached`);
    assert.ok(cachedMs < 50, `a second check of the same disk generation is answered from the cache (${cachedMs} ms)`);

    // The installer stays, the RunOnce entry goes: not Ready.
    await dropRunOnce(image, dir);
    const staging = await readAgentStaging(image);
    assert.ok(staging.installerSha256, 'the installer is still on the disk');
    assert.equal(staging.runOnce, null);
    const noRunOnce = await probe.checkDisk(disk);
    assert.equal(noRunOnce.ready, false);
    assert.match(noRunOnce.reason!, /no RunOnce entry/);
  });

  it('a disk that is not Windows, or has no data, is not Ready; Linux VMs are not inspected', async () => {
    const probe = new AgentProbe(disks, join(dir, 'work'));
    const blank = { uniqueId: 'blank' };
    const fh = await fsp.open(disks.pathOf(blank), 'w');
    await fh.truncate(16 * MiB);
    await fh.close();
    const check = await probe.checkDisk(blank);
    assert.equal(check.ready, false);
    assert.match(check.reason!, /could not be read as a Windows disk/);
    assert.equal((await probe.checkDisk({ uniqueId: 'missing' })).ready, false);
    assert.deepEqual(await probe.check({ osType: 'Linux' }, undefined), { ready: true });
  });
});
