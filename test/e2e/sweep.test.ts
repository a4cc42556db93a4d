import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { buildDataDiskImage } from '../../src/lab/demo';
import { sweepScheduleId, type SweepReport } from '../../src/domain/sweep';
import { VHD_RESTORE_ID_METADATA_KEY } from '../../src/azure/pageblob';
import { startAzureRestore, startVSphereRestore } from '../../src/client/restore';
import type { VSphereClient } from '../../src/vsphere';
import { ROOT, importTestVm, openTestEnv, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { labVSphere } from '../helpers/vsphere';
import { clearFaults, labArm, labAzure, labContainer, setFaults } from '../helpers/azure';

const MiB = 1024 * 1024;
let env: TestEnv;
let worker: WorkerProcess;
let vs: VSphereClient;
let tmp: string;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

/** The activity has started on a worker (scheduled is not enough: a terminate before the start would leave nothing). */
const pending = async (handle: WorkflowHandle, name: string) =>
  (await handle.describe()).raw.pendingActivities?.some(
    (p) => p.activityType?.name === name && p.state === temporal.api.enums.v1.PendingActivityState.PENDING_ACTIVITY_STATE_STARTED,
  );
const blobPrefix = (restoreId: string) => restoreId.replace(/[^A-Za-z0-9-]/g, '-').toLowerCase();

function cli(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), ...args], {
      env: { ...process.env, VMRESTORE_TASK_QUEUE: env.taskQueue },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.once('exit', (code) => resolve({ code, out }));
  });
}

/** `vmrestore sweep ...` against this test's task queue; returns its JSON report. */
function cliSweep(args: string[]): Promise<SweepReport> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), 'sweep', '--json', ...args], {
      env: { ...process.env, VMRESTORE_TASK_QUEUE: env.taskQueue },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let errText = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (errText += d));
    child.once('exit', (code) => {
      try {
        resolve(JSON.parse(out) as SweepReport);
      } catch {
        reject(new Error(`vmrestore sweep exited ${code}: ${out}${errText}`));
      }
    });
  });
}

describe('the sweeper removes what closed restores left behind, and nothing else', () => {
  before(async () => {
    env = await openTestEnv('sweep');
    // The lease's own holder check is slowed down, so a helper attachment is left for the sweeper.
    worker = await startWorkerProcess(env.taskQueue, {
      VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '2',
      VMRESTORE_AZURE_LEASE_CHECK_SECONDS: '3600',
    });
    vs = await labVSphere(env.config);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-sweep-'));
  });
  after(async () => {
    await clearFaults().catch(() => {});
    await worker?.stop();
    await vs?.logout().catch(() => {});
    await env?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('terminated vSphere and Azure restores: a dry run lists their VMs, snapshot, attachments, NIC, disks and blobs; a real run removes them', async () => {
    const a = labAzure();
    const { compute } = labArm();
    const dc = await vs.datacenter('DC0');
    const stamp = Date.now().toString(36);

    // Foreign resources without our tag: an empty managed disk, a blob, and the lab's own vCenter VMs.
    const foreignDisk = `foreign-${stamp}`;
    await compute.disks.createOrUpdate(a.resourceGroup, foreignDisk, {
      location: a.location,
      sku: { name: 'Standard_LRS' },
      creationData: { createOption: 'Empty' },
      diskSizeGB: 1,
    });
    const foreignBlob = labContainer().getBlockBlobClient(`foreign-${stamp}/disk0.vhd`);
    await labContainer().createIfNotExists();
    await foreignBlob.upload('not ours', 8);
    const untaggedVm = (await vs.findVmByName(dc, 'DC0_H0_VM0'))!;
    assert.ok(untaggedVm, "vcsim's own VM, which carries no restore id");

    // A completed restore keeps everything.
    const done = await startAzureRestore(
      env.client,
      { restorePointId: env.demo['demo-linux'], vmName: `t-keep-${stamp}` },
      { taskQueue: env.taskQueue },
    );
    await done.result();

    // vSphere: terminated mid-write through HotAdd: the VM, its restore snapshot and the proxy attachment stay.
    buildDataDiskImage(path.join(tmp, 'disk0.img'), 96 * MiB, [[0, 96 * MiB]], `sweep-${stamp}`);
    const rpId = await importTestVm(env.config.repository.path, tmp, {
      name: 'sweep-vm',
      disks: [{ path: 'disk0.img', provisioning: 'thick' }],
    });
    const vsVm = `t-swv-${stamp}`;
    const vsh = await startVSphereRestore(
      env.client,
      { restorePointId: rpId, vmName: vsVm, transport: 'hotadd', throttleMBps: 4 },
      { taskQueue: env.taskQueue },
    );
    await until('the HotAdd write to run', 120_000, () => pending(vsh, 'writeDisk'));
    await sleep(1500);
    await vsh.terminate('test: leave the restore behind');
    const proxy = (await vs.findVmByName(dc, 'vmrestore-proxy'))!;
    const restoredVm = (await vs.findVmByName(dc, vsVm))!;
    assert.ok(restoredVm, 'the terminated restore left its VM');
    const vsDisk = (await restoredVm.config()).disks[0].fileName;
    assert.ok((await proxy.attachedDiskFiles()).includes(vsDisk), 'and its disk on the HotAdd proxy');
    assert.ok((await restoredVm.snapshots()).length > 0, 'and its snapshot');

    // Azure, terminated while the helper prepares its disk: managed disk, blob and helper attachment stay.
    const azHelper = await startAzureRestore(
      env.client,
      { restorePointId: env.demo['demo-linux'], vmName: `t-swh-${stamp}` },
      { taskQueue: env.taskQueue },
    );
    await until('guest preparation on the helper', 180_000, () => pending(azHelper, 'prepareGuestOnHelper'));
    await azHelper.terminate('test: leave the restore behind');
    const helperDisks = async () =>
      ((await compute.virtualMachines.get(a.resourceGroup, a.helperVmName)).storageProfile?.dataDisks ?? []).filter((d) =>
        d.managedDisk?.id?.endsWith(`/t-swh-${stamp}-osdisk`),
      ).length;
    assert.equal(await helperDisks(), 1, "the dead restore's disk is still on the helper");

    // Azure, terminated while its VM is being created: VM, NIC, disk and blob stay.
    const azVmName = `t-swa-${stamp}`;
    await setFaults([{ kind: 'delay', method: 'PUT', pathPattern: `/virtualMachines/${azVmName}$`, count: 1, delayMs: 8000 }]);
    const azVm = await startAzureRestore(
      env.client,
      { restorePointId: env.demo['demo-linux'], vmName: azVmName },
      { taskQueue: env.taskQueue },
    );
    await until('the VM create', 180_000, () => pending(azVm, 'createAzureVm'));
    // Its PUT is on the wire (held by the simulator for 8 s) before the workflow goes.
    await sleep(1000);
    await azVm.terminate('test: leave the restore behind');
    await until(
      'the VM the delayed create makes',
      60_000,
      async () => (await compute.virtualMachines.get(a.resourceGroup, azVmName)).provisioningState === 'Succeeded',
    );
    await clearFaults();

    // A restore's id is its workflow id and first run id: what its resources are tagged and named with.
    const [vshId, azHelperId, azVmId] = await Promise.all(
      [vsh, azHelper, azVm].map(async (h) => `${h.workflowId}@${(await h.describe()).runId}`),
    );
    const dead = new Set([vshId, azHelperId, azVmId]);
    const ours = (r: SweepReport) => r.items.filter((i) => dead.has(i.restoreId));
    const summary = (r: SweepReport) =>
      ours(r)
        .map((i) => `${i.kind} ${i.name}`)
        .sort();

    // A disk tagged with a restore id that has no workflow at all: kept unless orphans are asked for.
    const orphanId = `restore-azure-never-ran-${stamp}`;
    const orphanDisk = `orphan-${stamp}`;
    await compute.disks.createOrUpdate(a.resourceGroup, orphanDisk, {
      location: a.location,
      tags: { vmrestoreRestoreId: orphanId },
      sku: { name: 'Standard_LRS' },
      creationData: { createOption: 'Empty' },
      diskSizeGB: 1,
    });

    const dry = await cliSweep(['--dry-run']);
    assert.ok(!dry.items.some((i) => i.restoreId === orphanId), 'a restore id without a workflow is kept by default');
    const orphans = await cliSweep(['--dry-run', '--include-orphans']);
    assert.deepEqual(
      orphans.items.filter((i) => i.restoreId === orphanId).map((i) => [i.kind, i.name, i.restoreState, i.action]),
      [['azure-disk', `${a.resourceGroup}/${orphanDisk}`, 'no workflow', 'would remove']],
    );
    await compute.disks.delete(a.resourceGroup, orphanDisk);
    assert.equal(dry.dryRun, true);
    assert.ok(
      ours(dry).every((i) => i.action === 'would remove' && i.restoreState === 'TERMINATED'),
      JSON.stringify(ours(dry)),
    );
    const expected = [
      `vsphere-vm ${vsVm}`,
      `vsphere-snapshot ${vsVm}: vmrestore-${vshId}`,
      `hotadd-attachment vmrestore-proxy: ${vsDisk}`,
      `helper-attachment ${a.helperVmName}: t-swh-${stamp}-osdisk`,
      `azure-disk ${a.resourceGroup}/t-swh-${stamp}-osdisk`,
      `vhd-blob ${blobPrefix(azHelperId)}/disk0.vhd`,
      `azure-vm ${a.resourceGroup}/${azVmName}`,
      `azure-nic ${a.resourceGroup}/${azVmName}-nic`,
      `azure-disk ${a.resourceGroup}/${azVmName}-osdisk`,
      `vhd-blob ${blobPrefix(azVmId)}/disk0.vhd`,
    ].sort();
    assert.deepEqual(summary(dry), expected, 'the dry run lists exactly what the three restores left');
    assert.ok(!dry.items.some((i) => i.restoreId.startsWith(`${done.workflowId}@`)), 'nothing of the completed restore');
    // A dry run changes nothing.
    assert.ok(await vs.findVmByName(dc, vsVm));
    assert.equal(await helperDisks(), 1);

    const real = await cliSweep([]);
    assert.deepEqual(summary(real), expected);
    assert.ok(
      ours(real).every((i) => i.action === 'removed'),
      JSON.stringify(ours(real).filter((i) => i.action !== 'removed')),
    );
    console.log(`sweep: removed ${real.items.length} item(s) in ${real.seconds.toFixed(1)} s, kept ${real.kept}`);

    assert.equal(await vs.findVmByName(dc, vsVm), null, 'the vSphere VM is gone');
    assert.ok(!(await proxy.attachedDiskFiles()).includes(vsDisk), 'the proxy has no HotAdd attachment left');
    assert.equal(await helperDisks(), 0, 'the helper has no attachment left');
    const gone = (p: Promise<unknown>) =>
      p.then(
        () => false,
        (e: { statusCode?: number }) => e.statusCode === 404,
      );
    assert.ok(await gone(compute.virtualMachines.get(a.resourceGroup, azVmName)), 'Azure VM removed');
    assert.ok(await gone(labArm().network.networkInterfaces.get(a.resourceGroup, `${azVmName}-nic`)), 'NIC removed');
    for (const d of [`${azVmName}-osdisk`, `t-swh-${stamp}-osdisk`])
      assert.ok(await gone(compute.disks.get(a.resourceGroup, d)), `${d} removed`);
    for await (const b of labContainer().listBlobsFlat({ includeMetadata: true })) {
      assert.ok(!dead.has(decodeURIComponent(b.metadata?.[VHD_RESTORE_ID_METADATA_KEY] ?? '')), `blob ${b.name} removed`);
    }

    // What is not ours, and what the completed restore made, is still there.
    assert.ok(await compute.disks.get(a.resourceGroup, foreignDisk), 'the untagged managed disk survives');
    assert.ok(await foreignBlob.exists(), 'the untagged blob survives');
    assert.ok(await compute.virtualMachines.get(a.resourceGroup, `t-keep-${stamp}`), "the completed restore's VM survives");
    assert.ok(await proxy.config(), 'the proxy VM survives');
    assert.ok(await vs.findVmByName(dc, 'DC0_H0_VM0'), 'the untagged vCenter VM survives');
    const again = await cliSweep([]);
    assert.deepEqual(ours(again), [], 'a second sweep finds nothing of them');
    await compute.disks.delete(a.resourceGroup, foreignDisk);
    await foreignBlob.delete();
  });

  it('the sweeper schedule runs the sweep workflow on the task queue', async () => {
    const bad = await cli(['sweep', '--install-schedule', '--every', '0']);
    assert.equal(bad.code, 2);
    assert.match(bad.out, /--every must be a whole number of minutes >= 1, got '0'/);
    const { code, out } = await cli(['sweep', '--install-schedule', '--every', '60']);
    assert.equal(code, 0, out);
    const id = sweepScheduleId(env.taskQueue);
    assert.match(out, new RegExp(`schedule '${id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}' runs the sweeper every 60 min`));
    const schedule = env.client.schedule.getHandle(id);
    try {
      const desc = await schedule.describe();
      assert.equal(desc.action.type, 'startWorkflow');
      assert.equal(desc.action.type === 'startWorkflow' && desc.action.workflowType, 'sweepRestores');
      assert.equal(desc.action.type === 'startWorkflow' && desc.action.taskQueue, env.taskQueue);
      await schedule.trigger();
      const run = await until('the scheduled sweep to run', 60_000, async () => (await schedule.describe()).info.recentActions[0]?.action);
      const report = (await env.client.workflow
        .getHandle(run.workflow.workflowId, run.workflow.firstExecutionRunId)
        .result()) as SweepReport;
      assert.equal(report.dryRun, false);
      assert.deepEqual(report.errors, []);
    } finally {
      await schedule.delete();
    }
  });
});
