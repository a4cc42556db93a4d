import assert from 'node:assert/strict';
import { promises as fsp, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import { WorkflowFailedError, type Client } from '@temporalio/client';
import type { AzureRestoreResult } from '../../src/domain/azure';
import type { VSphereRestoreRequest, VSphereRestoreResult } from '../../src/domain/vsphere';
import { VERIFICATION_FAILED, verifierTaskQueue, type RestoreVerification, type VerificationReport } from '../../src/domain/verification';
import { seedDemoRepository } from '../../src/lab/demo';
import { run } from '../../src/guest/exec';
import { Ext4Volume } from '../../src/guest/linux/ext4';
import { ensureGuestImage, guestVmJson, type GuestImage } from '../../src/lab/guests';
import { importRestorePoint } from '../../src/repository';
import { getRestoreStatus, startAzureRestore, startVSphereRestore } from '../../src/client/restore';
import { openTestEnv, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { labVSphere } from '../helpers/vsphere';
import type { VSphereClient } from '../../src/vsphere';

/**
 * Restores with `verify: true`: the restored disks are read back from the target (vcsim's datastore over
 * its HTTP file API; the ARM simulator's managed disks through grant access) and booted under qemu (TCG)
 * by a separate `vmrestore worker --verifier` process, on the verifier's own task queue.
 */

const BUILD_TIMEOUT = 30 * 60_000;
/** Under TCG a boot takes 30-90 s on an idle 2-core machine, several minutes on a loaded one. */
const BOOT_LIMIT_S = 600;
const TEST_TIMEOUT = (BOOT_LIMIT_S + 420) * 1000;

let env: TestEnv;
let worker: WorkerProcess;
let verifier: WorkerProcess;
let vs: VSphereClient;
let tmp: string;
let bios: GuestImage;
let uefi: GuestImage;
let goodRp: string;
let uefiRp: string;
let brokenRp: string;

/** The BIOS guest with a third disk in fstab that the VM does not have (no nofail), and a serial console. */
async function importBrokenFstabGuest(image: GuestImage): Promise<string> {
  const dir = path.join(tmp, 'broken-fstab');
  await fsp.mkdir(dir, { recursive: true });
  const osDisk = path.join(dir, 'os.img');
  await run('cp', ['--sparse=always', image.osDisk, osDisk], { timeoutMs: 300_000 });
  const root = new Ext4Volume(osDisk, image.rootPartition.offsetBytes);
  const fstab = await root.readText('/etc/fstab');
  const grub = await root.readText('/boot/grub/grub.cfg');
  assert.ok(fstab && grub && / quiet$/m.test(grub), 'the guest has an fstab and a grub.cfg with quiet');
  await root.apply([
    { op: 'write', path: '/etc/fstab', content: `${fstab.trimEnd()}\n/dev/sdc1\t/srv/archive\text4\tdefaults\t0\t2\n`, mode: 0o644 },
    // console=ttyS0 so that the verification lab can read the emergency prompt.
    { op: 'write', path: '/boot/grub/grub.cfg', content: grub.replace(/ quiet$/m, ' console=ttyS0'), mode: 0o444 },
  ]);
  const vmJson = path.join(dir, 'vm.json');
  writeFileSync(vmJson, JSON.stringify(guestVmJson({ ...image, osDisk }, 'deb12-broken-fstab')));
  return (await importRestorePoint(env.config.repository.path, vmJson)).restorePointId;
}

function check(report: VerificationReport, name: string) {
  const c = report.checks.find((x) => x.name === name);
  assert.ok(c, `check ${name} missing from ${JSON.stringify(report.checks)}`);
  return c;
}

function explain(v: RestoreVerification | undefined): string {
  return JSON.stringify(v, null, 1);
}

/** Polls visibility (eventually consistent) until the query finds the workflow. */
async function findByQuery(client: Client, query: string): Promise<string[]> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const ids: string[] = [];
    for await (const w of client.workflow.list({ query })) ids.push(w.workflowId);
    if (ids.length > 0 || Date.now() > deadline) return ids;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/** The verifyBoot activity as history shows it: its task queue and the worker identity that ran it. */
async function verifyActivityInHistory(workflowId: string): Promise<{ taskQueue: string; identity: string }[]> {
  const history = await env.client.workflow.getHandle(workflowId).fetchHistory();
  const events = history.events ?? [];
  const out: { taskQueue: string; identity: string }[] = [];
  for (const e of events) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s?.activityType?.name !== 'verifyBoot') continue;
    const started = events.find((x) => x.activityTaskStartedEventAttributes?.scheduledEventId?.toString() === e.eventId?.toString());
    out.push({ taskQueue: s.taskQueue?.name ?? '', identity: started?.activityTaskStartedEventAttributes?.identity ?? '' });
  }
  return out;
}

async function restoreVSphere(req: VSphereRestoreRequest): Promise<{ workflowId: string; result?: VSphereRestoreResult; error?: unknown }> {
  const handle = await startVSphereRestore(env.client, req, { taskQueue: env.taskQueue });
  try {
    return { workflowId: handle.workflowId, result: await handle.result() };
  } catch (error) {
    return { workflowId: handle.workflowId, error };
  }
}

before(
  async () => {
    env = await openTestEnv('verify');
    tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'verify-restore-'));
    [bios, uefi] = (await Promise.all([ensureGuestImage('debian12-bios'), ensureGuestImage('debian12-uefi')])).map((b) => b.image);
    const seeded = await seedDemoRepository(env.config.repository.path, () => {}, { bootableGuests: true });
    goodRp = seeded['demo-deb12-bios'];
    uefiRp = seeded['demo-deb12-uefi'];
    brokenRp = await importBrokenFstabGuest(bios);
    // The main worker leaves the verifier queue to a worker of its own, as on a deployment with a qemu host.
    worker = await startWorkerProcess(env.taskQueue, { VMRESTORE_LAB_VERIFIER_WORKER: 'separate' });
    verifier = await startWorkerProcess(env.taskQueue, {}, ['--verifier']);
    vs = await labVSphere(env.config);
  },
  { timeout: BUILD_TIMEOUT },
);

after(async () => {
  await worker?.stop();
  await verifier?.stop();
  await vs?.logout().catch(() => {});
  await env?.close();
  if (tmp) await fsp.rm(tmp, { recursive: true, force: true });
});

const staticNet = () => ({ address: bios.network.address, prefixLength: bios.network.prefixLength, gateway: bios.network.gateway });

describe('restores verified by booting what the target holds', { concurrency: true }, () => {
  it(
    'vSphere: the BIOS Debian guest boots from the datastore bytes and answers SSH on its static address',
    { timeout: TEST_TIMEOUT },
    async (t) => {
      const vmName = `deb12-verified-${env.taskQueue.slice(-6)}`;
      const { workflowId, result, error } = await restoreVSphere({
        restorePointId: goodRp,
        vmName,
        verify: true,
        verifyNetwork: staticNet(),
        verifyTimeoutSeconds: BOOT_LIMIT_S,
      });
      assert.equal(error, undefined, String(error));
      const v = result!.verification;
      const r = v.report!;
      t.diagnostic(
        `vSphere BIOS guest (SeaBIOS, TCG): SSH banner after ${((r.recoveryTimeMs ?? NaN) / 1000).toFixed(1)} s; disks read in ${r.readSeconds} s`,
      );
      assert.equal(v.status, 'passed', explain(v));
      assert.equal(r.firmware, 'bios');
      for (const name of ['bootLoader', 'kernelStarted', 'sshBanner', 'noEmergencyMode'])
        assert.equal(check(r, name).status, 'passed', explain(v));
      assert.match(check(r, 'bootLoader').detail, /SeaBIOS/);
      assert.match(r.sshBanner ?? '', /^SSH-2\.0-OpenSSH/);
      assert.equal(r.recoveryTimeMs, check(r, 'sshBanner').elapsedMs);
      // Its own static address on its own subnet; no DHCP asked for.
      assert.equal(r.network.guestAddress, bios.network.address);
      assert.equal(r.network.subnet, bios.network.subnet);
      assert.equal(r.network.dhcp, false);
      assert.equal(check(r, 'dhcpLease').required, false);
      assert.match(check(r, 'sshBanner').detail, new RegExp(`from ${bios.network.address.replace(/\./g, '\\.')}:22`));
      // The NIC with the MAC the persistent-net rule names; the disks in the VM's order, read whole from the datastore.
      assert.equal(r.nic.mac, bios.network.mac);
      const cfg = await (await vs.findVmByName(await vs.datacenter('DC0'), vmName))!.config();
      assert.deepEqual(
        r.disks.map((d) => d.source),
        cfg.disks.map((d) => d.fileName.replace(/\.vmdk$/, '-flat.vmdk')),
      );
      assert.deepEqual(
        r.disks.map((d) => [d.role, d.bytes, d.bytesRead]),
        [
          ['os', bios.osDiskBytes, bios.osDiskBytes],
          ['data', bios.dataDiskBytes, bios.dataDiskBytes],
        ],
      );
      assert.equal(r.serialTail, undefined, 'no serial log in a passed report');
      // History: verifyBoot ran on the verifier queue, in the verifier worker.
      const acts = await verifyActivityInHistory(workflowId);
      assert.equal(acts.length, 1);
      assert.equal(acts[0].taskQueue, verifierTaskQueue(env.taskQueue));
      assert.match(acts[0].identity, /\/vmrestore-verifier$/);
      // Visibility: the typed search attribute.
      assert.deepEqual(await findByQuery(env.client, `WorkflowId = '${workflowId}' AND RestoreVerified = 'passed'`), [workflowId]);
      const status = await getRestoreStatus(env.client, workflowId);
      assert.equal((status.result as VSphereRestoreResult).verification.status, 'passed');
    },
  );

  it(
    'vSphere negative control: fstab naming a missing disk without nofail lands in emergency mode and fails the restore',
    { timeout: TEST_TIMEOUT },
    async (t) => {
      const vmName = `deb12-broken-${env.taskQueue.slice(-6)}`;
      const { workflowId, error } = await restoreVSphere({
        restorePointId: brokenRp,
        vmName,
        verify: true,
        verifyNetwork: staticNet(),
        verifyTimeoutSeconds: BOOT_LIMIT_S,
      });
      assert.ok(error instanceof WorkflowFailedError, `the restore failed: ${String(error)}`);
      const cause = error.cause;
      assert.ok(cause instanceof ApplicationFailure, String(cause));
      assert.equal(cause.type, VERIFICATION_FAILED);
      assert.match(cause.message, /noEmergencyMode/);
      const v = cause.details?.[0] as RestoreVerification;
      const r = v.report!;
      t.diagnostic(`negative control: stopped by ${r.stoppedBy} after ${r.bootSeconds} s`);
      assert.equal(v.status, 'failed');
      assert.equal(r.stoppedBy, 'emergency-mode', explain(v));
      assert.equal(check(r, 'kernelStarted').status, 'passed');
      assert.equal(check(r, 'noEmergencyMode').status, 'failed');
      assert.match(check(r, 'noEmergencyMode').detail, /emergency mode|root account is locked/);
      assert.equal(check(r, 'sshBanner').status, 'failed');
      assert.ok(r.serialTail && /sdc1|archive/.test(r.serialTail), `the serial tail names the missing device:\n${r.serialTail}`);
      // Compensated: the VM is gone; the attribute says failed.
      assert.equal(await vs.findVmByName(await vs.datacenter('DC0'), vmName), null);
      assert.deepEqual(await findByQuery(env.client, `WorkflowId = '${workflowId}' AND RestoreVerified = 'failed'`), [workflowId]);
      const status = await getRestoreStatus(env.client, workflowId);
      assert.equal(status.status, 'FAILED');
      assert.equal((status.failureDetails as RestoreVerification).status, 'failed');
    },
  );

  it(
    'vSphere keepOnVerifyFailure: a boot that misses its time limit keeps the VM, unstarted, and says failed',
    { timeout: TEST_TIMEOUT },
    async () => {
      const vmName = `deb12-kept-${env.taskQueue.slice(-6)}`;
      const { workflowId, result, error } = await restoreVSphere({
        restorePointId: goodRp,
        vmName,
        powerOn: true,
        verify: true,
        verifyNetwork: staticNet(),
        // Far less than any boot under TCG takes: the SSH check fails by time limit.
        verifyTimeoutSeconds: 10,
        keepOnVerifyFailure: true,
      });
      assert.equal(error, undefined, String(error));
      const v = result!.verification;
      assert.equal(v.status, 'failed', explain(v));
      assert.equal(v.kept, true);
      assert.equal(v.report!.stoppedBy, 'time-limit');
      assert.match(check(v.report!, 'sshBanner').detail, /time limit of 10 s/);
      assert.equal(result!.poweredOn, false, 'a VM that failed verification is not started');
      const vm = await vs.findVmByName(await vs.datacenter('DC0'), vmName);
      assert.ok(vm, 'the VM is kept');
      assert.equal(await vm.powerState(), 'poweredOff');
      assert.deepEqual(await findByQuery(env.client, `WorkflowId = '${workflowId}' AND RestoreVerified = 'failed'`), [workflowId]);
      await vm.destroy();
    },
  );

  it('vSphere without verify: RestoreVerified=skipped and no verifyBoot', { timeout: 300_000 }, async () => {
    const { workflowId, result, error } = await restoreVSphere({
      restorePointId: goodRp,
      vmName: `deb12-plain-${env.taskQueue.slice(-6)}`,
    });
    assert.equal(error, undefined, String(error));
    assert.deepEqual(result!.verification, { status: 'skipped' });
    assert.deepEqual(await verifyActivityInHistory(workflowId), []);
    assert.deepEqual(await findByQuery(env.client, `WorkflowId = '${workflowId}' AND RestoreVerified = 'skipped'`), [workflowId]);
    await (await vs.findVmByName(await vs.datacenter('DC0'), result!.vmName))?.destroy();
  });

  it(
    'Azure: the UEFI guest restored as Generation 2 with verify boots its managed disks under OVMF, DHCP lease and SSH',
    { timeout: TEST_TIMEOUT },
    async (t) => {
      const vmName = `deb12-az-${env.taskQueue.slice(-6)}`;
      const handle = await startAzureRestore(
        env.client,
        // Kept on failure, so that a failed report is in the result for the assertion message.
        { restorePointId: uefiRp, vmName, generation: 2, verify: true, keepOnVerifyFailure: true, verifyTimeoutSeconds: BOOT_LIMIT_S },
        { taskQueue: env.taskQueue },
      );
      const result: AzureRestoreResult = await handle.result();
      const v = result.verification;
      const r = v.report!;
      assert.ok(r, 'the result carries the report');
      t.diagnostic(
        `Azure Gen2 (OVMF, TCG): ${v.status}, ${r.recoveryTimeMs === undefined ? 'no SSH banner' : `SSH banner after ${(r.recoveryTimeMs / 1000).toFixed(1)} s`}; disks read in ${r.readSeconds} s`,
      );
      assert.equal(result.generation, 2);
      assert.equal(r.firmware, 'efi');
      assert.equal(v.status, 'passed', explain(v));
      // Every check was run, and every one passed: Azure's serial console shows the guest, DHCP gave eth0 its address.
      assert.deepEqual(r.checks.map((c) => c.name).sort(), [
        'bootLoader',
        'dhcpLease',
        'kernelStarted',
        'noEmergencyMode',
        'serialConsole',
        'sshBanner',
      ]);
      for (const c of r.checks) assert.equal(c.status, 'passed', `${c.name}: ${explain(v)}`);
      assert.match(check(r, 'bootLoader').detail, /OVMF/);
      assert.match(r.sshBanner ?? '', /^SSH-2\.0-OpenSSH/);
      // Azure's order: OS disk, temporary resource disk, data disks; read through grant access.
      assert.deepEqual(
        r.disks.map((d) => d.role),
        ['os', 'resource', 'data'],
      );
      assert.match(r.disks[0].source, /managed disk/);
      // Only the written pages travel (Get Page Ranges on the export): the guest's 2 GiB OS disk is mostly holes.
      assert.equal(r.disks[0].bytes, uefi.osDiskBytes);
      assert.ok(r.disks[0].bytesRead > 0 && r.disks[0].bytesRead < r.disks[0].bytes, `read ${r.disks[0].bytesRead} of ${r.disks[0].bytes}`);
      assert.equal(r.network.dhcp, true);
      assert.match(r.nic.mac, /^00:0d:3a:/, "a NIC with a MAC from Azure's range, which the guest never knew");
      const acts = await verifyActivityInHistory(handle.workflowId);
      assert.equal(acts.length, 1);
      assert.equal(acts[0].taskQueue, verifierTaskQueue(env.taskQueue));
      assert.deepEqual(await findByQuery(env.client, `WorkflowId = '${handle.workflowId}' AND RestoreVerified = 'passed'`), [
        handle.workflowId,
      ]);
    },
  );
});
