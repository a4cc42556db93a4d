import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { resolvePassword } from '../../src/config';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow';
import type { SweepReport } from '../../src/domain/sweep';
import type { ImportDiskCheckpoint, VSphereImportResult } from '../../src/domain/vsphere-import';
import { startVSphereImport } from '../../src/client/import';
import { ensureTool, GOVC } from '../../src/lab/binaries';
import { getRestorePoint, listRestorePoints } from '../../src/repository';
import { chunksDir } from '../../src/repository/format';
import { stagingDir } from '../../src/repository/staged-disk';
import { failureMessage, startVSphereRestore } from '../../src/client/restore';
import { importProgressQuery } from '../../src/workflows';
import { parseDatastorePath, uploadDatastoreFile, flatFileName, type Vm } from '../../src/vsphere';
import { refArg, typedArg } from '../../src/vsphere/soap';
import { ROOT, replayFinished, sha256File, sha256OfBackedUpDisk, startWorkerProcess } from '../helpers/env';
import { processTreeIo } from '../helpers/proc-io';
import { readLabState } from '../../src/lab/lab';
import { closeVSphereLab, localFlatFile, openVSphereLab, type VSphereLab } from '../helpers/vsphere';

const MiB = 1024 * 1024;
const run = promisify(execFile);
let lab: VSphereLab;
let repo: string;

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** Chunk files in the repository: what an import really wrote. */
function countChunkFiles(): number {
  const dir = chunksDir(repo);
  if (!existsSync(dir)) return 0;
  return readdirSync(dir).reduce((n, sub) => n + readdirSync(path.join(dir, sub)).filter((f) => /^[0-9a-f]{64}$/.test(f)).length, 0);
}

/** A VM on vcsim whose disks hold `contents`, put into the flat extents through the datastore file API. */
async function sourceVm(name: string, disks: Array<{ bytes: Buffer; thin: boolean }>): Promise<{ vm: Vm; files: string[] }> {
  const dc = await lab.vs.datacenter('DC0');
  const vm = await lab.vs.createVm(dc, {
    name,
    datastore: 'LocalDS_0',
    guestId: 'otherLinux64Guest',
    cpus: 2,
    memoryMiB: 1536,
    firmware: 'efi',
    nics: [{ network: 'VM Network' }],
    disks: disks.map((d) => ({ capacityBytes: d.bytes.length, thinProvisioned: d.thin })),
  });
  const files = (await vm.config()).disks.map((d) => d.fileName);
  for (const [i, d] of disks.entries()) await putFlat(files[i], d.bytes);
  return { vm, files };
}

async function putFlat(descriptor: string, bytes: Buffer): Promise<void> {
  const { datastore, path: rel } = parseDatastorePath(flatFileName(descriptor));
  await uploadDatastoreFile(lab.vs, { datacenter: 'DC0', datastore, path: rel, size: bytes.length, body: [bytes] });
}

async function importVm(vmName: string): Promise<{ result: VSphereImportResult; workflowId: string }> {
  const handle = await startVSphereImport(lab.env.client, { vmName }, { taskQueue: lab.env.taskQueue });
  return { result: await handle.result(), workflowId: handle.workflowId };
}

function govcEnv(): NodeJS.ProcessEnv {
  const p = lab.env.config.vsphere.profiles.lab;
  return { ...process.env, GOVC_URL: p.url, GOVC_USERNAME: p.username, GOVC_PASSWORD: resolvePassword('lab', p), GOVC_INSECURE: '1' };
}

/** Snapshot names of a VM as govc (govmomi's own client) lists them ('.' marks the current state). */
async function govcSnapshotNames(vmName: string): Promise<string[]> {
  const { stdout } = await run(ensureTool(GOVC), ['snapshot.tree', '-vm', vmName], { env: govcEnv() });
  return stdout
    .split('\n')
    .map((l) => l.replace(/^[\s|`\\-]+/, '').trim())
    .filter((n) => n !== '' && n !== '.');
}

/** `vmrestore sweep --json ...` on the lab's task queue: its report. */
async function cliSweep(args: string[]): Promise<SweepReport> {
  const { stdout } = await run(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), 'sweep', '--json', ...args], {
    env: { ...process.env, VMRESTORE_TASK_QUEUE: lab.env.taskQueue },
  });
  return JSON.parse(stdout) as SweepReport;
}

/** The first checkpoint inside a disk that the running import heartbeats (0 if none came within a minute). */
async function stagedCheckpoint(handle: WorkflowHandle): Promise<number> {
  for (const deadline = Date.now() + 60_000; Date.now() < deadline; ) {
    const pending = (await handle.describe()).raw.pendingActivities?.find((a) => a.activityType?.name === 'importVSphereDisk');
    const payloads = pending?.heartbeatDetails?.payloads;
    if (payloads?.length) {
      const cp = await decodeFromPayloadsAtIndex<ImportDiskCheckpoint>(lab.env.client.options.loadedDataConverter, 0, payloads);
      if (cp.stagedOffset > 0) return cp.stagedOffset;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return 0;
}

/** What `govc vm.info -json` prints of a VM, as far as the test reads it. */
interface GovcVm {
  config: {
    firmware: string;
    hardware: {
      numCPU: number;
      memoryMB: number;
      device: Array<{
        capacityInBytes?: number;
        macAddress?: string;
        backing?: { fileName?: string; thinProvisioned?: boolean; deviceName?: string };
      }>;
    };
  };
}

/** The VM as govc (govmomi's own client, built once like the lab's other Go tools) reports it. */
async function govcVmInfo(vmName: string): Promise<GovcVm> {
  const { stdout } = await run(ensureTool(GOVC), ['vm.info', '-json', vmName], { env: govcEnv() });
  return (JSON.parse(stdout) as { virtualMachines: GovcVm[] }).virtualMachines[0];
}

describe('restore points straight from vCenter (real Temporal + vcsim + repository)', () => {
  const name = `vsimp-${randomBytes(3).toString('hex')}`;
  // disk 0: data, a zero gap, data (thick); disk 1: zeros then data (thin).
  const disk0 = Buffer.concat([randomBytes(8 * MiB), Buffer.alloc(8 * MiB), randomBytes(8 * MiB)]);
  const disk1 = Buffer.concat([Buffer.alloc(4 * MiB), randomBytes(8 * MiB)]);
  let vm: Vm;
  let files: string[];
  let first: VSphereImportResult;
  /** Finished imports, replayed at the end: a non-deterministic change to the workflow fails there. */
  const workflowIds: string[] = [];

  before(async () => {
    lab = await openVSphereLab('vsphere-import');
    repo = lab.env.config.repository.path;
    ({ vm, files } = await sourceVm(name, [
      { bytes: disk0, thin: false },
      { bytes: disk1, thin: true },
    ]));
  });
  after(async () => {
    await vm?.destroy().catch(() => undefined);
    await closeVSphereLab(lab);
  });

  it('imports the VM: disk bytes equal the datastore, config equals what vCenter and govc report, snapshot removed', async () => {
    const before = countChunkFiles();
    const { result, workflowId } = await importVm(name);
    first = result;
    workflowIds.push(workflowId);
    assert.equal(result.parentId, null, 'first restore point of this VM');
    assert.equal(result.snapshotRemoved, true);
    assert.deepEqual(await vm.snapshots(), [], 'no snapshot left on the VM');
    // 16 + 8 MiB of random data in 1 MiB blocks, 8 + 4 zero blocks.
    assert.deepEqual(
      { written: result.stats.chunksWritten, reused: result.stats.chunksReused, zero: result.stats.zeroBlocks },
      { written: 24, reused: 0, zero: 12 },
    );
    assert.equal(countChunkFiles() - before, 24, 'chunk files added to the repository');
    assert.deepEqual(
      result.disks.map((d) => [d.changeDetection, d.bytesRead]),
      [
        ['full', disk0.length],
        ['full', disk1.length],
      ],
    );

    for (const [i, bytes] of [disk0, disk1].entries()) {
      const onDatastore = await sha256File(localFlatFile(files[i]));
      assert.equal(onDatastore, sha256(bytes), `disk ${i} on the datastore is what the test put there`);
      assert.equal(await sha256OfBackedUpDisk(repo, result.restorePointId, i), onDatastore, `disk ${i} in the restore point`);
    }

    const rp = await getRestorePoint(repo, result.restorePointId);
    const cfg = await vm.config();
    assert.deepEqual(
      {
        name: rp.vm.name,
        guestOs: rp.vm.guestOs,
        firmware: rp.vm.firmware,
        cpus: rp.vm.cpus,
        memoryMiB: rp.vm.memoryMiB,
        nics: rp.vm.nics,
        disks: rp.vm.disks.map((d) => [d.capacityBytes, d.provisioning]),
      },
      {
        name,
        guestOs: 'linux',
        firmware: cfg.firmware,
        cpus: cfg.cpus,
        memoryMiB: cfg.memoryMiB,
        nics: cfg.nics.map((n) => ({ network: n.network, macAddress: n.macAddress })),
        disks: cfg.disks.map((d) => [d.capacityBytes, d.thinProvisioned ? 'thin' : 'thick']),
      },
      'restore point config equals what vCenter reports',
    );
    assert.deepEqual([rp.vm.firmware, rp.vm.cpus, rp.vm.memoryMiB], ['efi', 2, 1536]);

    const govc = await govcVmInfo(name);
    const hw = govc.config.hardware;
    const devices = hw.device;
    assert.deepEqual(
      {
        cpus: hw.numCPU,
        memoryMiB: hw.memoryMB,
        firmware: govc.config.firmware,
        disks: devices
          .filter((d) => /\.vmdk$/.test(d.backing?.fileName ?? ''))
          .map((d) => [d.capacityInBytes, !!d.backing?.thinProvisioned]),
        macs: devices.filter((d) => d.macAddress).map((d) => [d.backing?.deviceName, d.macAddress]),
      },
      {
        cpus: rp.vm.cpus,
        memoryMiB: rp.vm.memoryMiB,
        firmware: rp.vm.firmware,
        disks: rp.vm.disks.map((d) => [d.capacityBytes, d.provisioning === 'thin']),
        macs: rp.vm.nics.map((n) => [n.network, n.macAddress]),
      },
      'restore point config equals govc vm.info',
    );

    const progress = await lab.env.client.workflow.getHandle(workflowId).query(importProgressQuery);
    assert.equal(progress.phase, 'completed');
    assert.deepEqual(
      progress.disks.map((d) => [d.state, d.bytesDone]),
      [
        ['done', disk0.length],
        ['done', disk1.length],
      ],
    );
  });

  it('a second import after a few MiB changed stores only the changed chunks; both points read back', async () => {
    assert.ok(first, 'needs the first import');
    // Changed-block tracking on: vcsim keeps the flag but gives the disks no change id, so digests decide.
    const task = await lab.vs.startTask(
      'ReconfigVM_Task',
      { _this: refArg(vm.moRef), spec: typedArg('VirtualMachineConfigSpec', { changeTrackingEnabled: 'true' }) },
      name,
    );
    await task.wait();
    const changed0 = Buffer.from(disk0);
    randomBytes(3 * MiB).copy(changed0, 1 * MiB); // blocks 1-3
    const changed1 = Buffer.from(disk1);
    randomBytes(MiB).copy(changed1, 2 * MiB); // block 2, zero before
    randomBytes(MiB / 2).copy(changed1, 6 * MiB + MiB / 4); // inside block 6
    await putFlat(files[0], changed0);
    await putFlat(files[1], changed1);

    const before = countChunkFiles();
    // Through the CLI this time, as a user runs it.
    const { stdout } = await run(
      process.execPath,
      [path.join(ROOT, 'bin', 'vmrestore.cjs'), 'repo', 'import', '--from-vsphere', name, '--json'],
      {
        env: { ...process.env, VMRESTORE_TASK_QUEUE: lab.env.taskQueue },
      },
    );
    const cli = JSON.parse(stdout.trim().split('\n').pop()!) as { status: string; result: VSphereImportResult };
    assert.equal(cli.status, 'COMPLETED');
    const result = cli.result;
    assert.equal(result.parentId, first.restorePointId, 'incremental on the first point');
    assert.deepEqual(await vm.snapshots(), [], 'no snapshot left on the VM');
    assert.deepEqual(
      { written: result.stats.chunksWritten, reused: result.stats.chunksReused, zero: result.stats.zeroBlocks },
      { written: 5, reused: 20, zero: 11 },
    );
    assert.equal(countChunkFiles() - before, 5, 'only the 5 changed blocks became chunk files');
    for (const d of result.disks) {
      assert.equal(d.changeDetection, 'digest', `disk ${d.diskIndex}`);
      assert.match(d.cbtUnavailable ?? '', /no change id/, `disk ${d.diskIndex}: why CBT was not used`);
    }

    const rp = await getRestorePoint(repo, result.restorePointId);
    const parent = await getRestorePoint(repo, first.restorePointId);
    const differing = rp.disks
      .flatMap((d, i) => d.blocks.map((b, j) => (b !== parent.disks[i].blocks[j] ? `${i}:${j}` : null)))
      .filter(Boolean);
    assert.deepEqual(differing, ['0:1', '0:2', '0:3', '1:2', '1:6'], 'blocks that differ from the parent');

    for (const [i, bytes] of [changed0, changed1].entries()) {
      assert.equal(await sha256OfBackedUpDisk(repo, result.restorePointId, i), sha256(bytes), `new point disk ${i}`);
      assert.equal(await sha256File(localFlatFile(files[i])), sha256(bytes), `datastore disk ${i}`);
    }
    for (const [i, bytes] of [disk0, disk1].entries()) {
      assert.equal(await sha256OfBackedUpDisk(repo, first.restorePointId, i), sha256(bytes), `first point disk ${i} unchanged`);
    }
  });

  it('the imported restore point restores to vSphere byte for byte', async () => {
    assert.ok(first, 'needs the first import');
    const handle = await startVSphereRestore(
      lab.env.client,
      { restorePointId: first.restorePointId, vmName: `${name}-restored`, transport: 'hotadd' },
      { taskQueue: lab.env.taskQueue },
    );
    const result = await handle.result();
    const dc = await lab.vs.datacenter('DC0');
    const restored = await lab.vs.findVmByName(dc, result.vmName);
    assert.ok(restored, `VM ${result.vmName} exists`);
    try {
      const cfg = await restored.config();
      assert.deepEqual([cfg.cpus, cfg.memoryMiB, cfg.firmware], [2, 1536, 'efi']);
      for (const [i, bytes] of [disk0, disk1].entries()) {
        assert.equal(await sha256File(localFlatFile(cfg.disks[i].fileName)), sha256(bytes), `restored disk ${i}`);
      }
    } finally {
      await restored.destroy();
    }
  });

  it('a disk that cannot be read fails the import, removes the snapshot and saves no restore point', async () => {
    const broken = `${name}-short`;
    const { vm: bvm, files: bfiles } = await sourceVm(broken, [
      { bytes: randomBytes(4 * MiB), thin: true },
      { bytes: randomBytes(4 * MiB), thin: true },
    ]);
    try {
      // Disk 1's flat extent is cut short: it holds less than the disk's capacity.
      await putFlat(bfiles[1], randomBytes(MiB));
      const handle = await startVSphereImport(lab.env.client, { vmName: broken }, { taskQueue: lab.env.taskQueue });
      workflowIds.push(handle.workflowId);
      const err = await handle.result().then(
        () => assert.fail('the import should fail'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof WorkflowFailedError);
      assert.match(failureMessage(err), /disk 1 .*holds 1048576 bytes, but the disk's capacity is 4194304/);

      const history = await handle.fetchHistory();
      const scheduled = (history.events ?? [])
        .map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name)
        .filter((n): n is string => !!n);
      assert.deepEqual(
        scheduled,
        [
          'prepareVSphereImport',
          'createImportSnapshot',
          'importVSphereDisk',
          'importVSphereDisk',
          'removeImportSnapshot',
          'discardImportStaging',
        ],
        'snapshot taken, disk 1 failed, compensation ran',
      );
      const completed = (history.events ?? []).filter((e) => e.activityTaskCompletedEventAttributes).length;
      assert.equal(completed, 5, 'every step but the failed disk read completed (no retry of a non-retryable failure)');
      assert.deepEqual(await bvm.snapshots(), [], 'the snapshot was removed after the failure');
      assert.equal((await listRestorePoints(repo)).filter((r) => r.vmName === broken).length, 0, 'no restore point saved');
      assert.ok(!existsSync(stagingDir(repo, handle.workflowId)), 'staged block maps removed');
    } finally {
      await bvm.destroy();
    }
  });

  it('a worker killed in the middle of a disk read: the retry resumes from the staged checkpoint', async (t) => {
    const big = `${name}-big`;
    const bytes = randomBytes(192 * MiB);
    const { vm: bvm } = await sourceVm(big, [{ bytes, thin: true }]);
    try {
      const handle = await startVSphereImport(lab.env.client, { vmName: big }, { taskQueue: lab.env.taskQueue });
      workflowIds.push(handle.workflowId);
      const staged = await stagedCheckpoint(handle);
      assert.ok(staged > 0 && staged < bytes.length, `a checkpoint inside the disk was heartbeated (staged ${staged})`);
      await lab.worker.kill();
      // What vCenter served from here on, counted by the kernel on the vcsim process (its socket writes):
      // the part of the disk after the checkpoint, not the whole disk again. This lane's vcsim serves only
      // this test now.
      const vcsimPid = readLabState().vsphere!.pid;
      const servedBefore = processTreeIo(vcsimPid).wchar;
      lab.worker = await startWorkerProcess(lab.env.taskQueue);
      const result = await handle.result();
      const served = processTreeIo(vcsimPid).wchar - servedBefore;
      const d = result.disks[0];
      t.diagnostic(
        `checkpoint seen before the kill ${staged / MiB} MiB; after it vcsim served ${(served / MiB).toFixed(1)} MiB of the ${bytes.length / MiB} MiB disk ` +
          `(the worker reports resuming at ${d.resumedFromOffset / MiB} MiB)`,
      );
      // Besides the disk's remaining bytes, vcsim answers SOAP calls (the snapshot's removal, the session).
      const slack = 4 * MiB;
      assert.ok(staged > slack, `the checkpoint (${staged}) is far enough into the disk to tell a resume from a restart`);
      assert.ok(
        served <= bytes.length - staged + slack,
        `vcsim served ${served} bytes after the kill: at most the ${bytes.length - staged} after the checkpoint (+${slack} for SOAP), so the read resumed`,
      );
      assert.equal(await sha256OfBackedUpDisk(repo, result.restorePointId, 0), sha256(bytes), 'disk bytes after the resumed read');
      assert.deepEqual(await bvm.snapshots(), [], 'no snapshot left');
      assert.ok(!existsSync(stagingDir(repo, handle.workflowId)), 'staging removed once saved');
    } finally {
      await bvm.destroy();
    }
  });

  it('a terminated import: the sweep lists its snapshot and staging in a dry run, removes them in a real run', async (t) => {
    const started = Date.now();
    const left = `${name}-left`;
    const bytes = randomBytes(192 * MiB);
    const { vm: lvm } = await sourceVm(left, [{ bytes, thin: true }]);
    try {
      const handle = await startVSphereImport(lab.env.client, { vmName: left }, { taskQueue: lab.env.taskQueue });
      const staged = await stagedCheckpoint(handle);
      assert.ok(staged > 0 && staged < bytes.length, `terminated inside the disk read (staged ${staged} of ${bytes.length})`);
      await handle.terminate('test: an import that dies mid-read');
      // A terminated workflow runs no compensation; the worker goes too, so nothing of the import runs any more.
      await lab.worker.kill();
      lab.worker = await startWorkerProcess(lab.env.taskQueue);
      const snapshotName = `vmrestore-import-${handle.workflowId}`;
      const staging = stagingDir(repo, handle.workflowId);
      assert.deepEqual(await govcSnapshotNames(left), [snapshotName], 'the import snapshot is left on the VM');
      assert.ok(existsSync(staging), `staging ${staging} is left in the repository`);

      const ours = (r: SweepReport) =>
        r.items
          .filter((i) => i.restoreId === handle.workflowId)
          .map((i) => [i.kind, i.name, i.restoreState, i.action])
          .sort();
      const dry = await cliSweep(['--dry-run']);
      assert.deepEqual(
        ours(dry),
        [
          ['import-snapshot', `${left}: ${snapshotName}`, 'TERMINATED', 'would remove'],
          ['import-staging', staging, 'TERMINATED', 'would remove'],
        ],
        'the dry run lists the snapshot and the staging',
      );
      assert.deepEqual(await govcSnapshotNames(left), [snapshotName], 'a dry run removes nothing');
      assert.ok(existsSync(staging), 'a dry run leaves the staging');

      const real = await cliSweep([]);
      assert.deepEqual(real.errors, []);
      assert.deepEqual(
        ours(real),
        [
          ['import-snapshot', `${left}: ${snapshotName}`, 'TERMINATED', 'removed'],
          ['import-staging', staging, 'TERMINATED', 'removed'],
        ],
        'the real run removes both',
      );
      assert.deepEqual(await govcSnapshotNames(left), [], 'govc lists no snapshot on the VM');
      assert.deepEqual(await lvm.snapshots(), [], 'the SOAP client reads no snapshot either');
      assert.ok(!existsSync(staging), 'no staging left');
      assert.equal((await listRestorePoints(repo)).filter((r) => r.vmName === left).length, 0, 'no restore point of the dead import');
      assert.equal(lab.worker.child.exitCode, null, `the worker is still running:\n${lab.worker.output().slice(-3000)}`);
      const again = await cliSweep(['--dry-run']);
      assert.deepEqual(ours(again), [], 'a second sweep finds nothing of it');
      t.diagnostic(`terminate, dry run, sweep and checks took ${((Date.now() - started) / 1000).toFixed(1)} s`);
    } finally {
      await lvm.destroy();
    }
  });

  it('an unknown VM is refused before anything is created', async () => {
    const handle = await startVSphereImport(lab.env.client, { vmName: `${name}-missing` }, { taskQueue: lab.env.taskQueue });
    const err = await handle.result().then(
      () => assert.fail('the import should fail'),
      (e: unknown) => e,
    );
    assert.match(failureMessage(err), new RegExp(`VM '${name}-missing' not found in datacenter 'DC0'`));
    workflowIds.push(handle.workflowId);
  });

  it('the finished imports replay against the current workflow code', async () => {
    assert.equal(await replayFinished(lab.env.client, workflowIds), workflowIds.length);
  });
});
