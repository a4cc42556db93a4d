/**
 * Restore plans against the lab: boot groups in order, an approval gate held until `plan approve`, a
 * per-datastore limit of 1 observed in the disk writes' activity times, a re-run that skips what the first
 * run restored and retries what failed, a cancel that undoes the running restore and starts no later group,
 * and a plan that continues as new with its history bounded.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { temporal } from '@temporalio/proto';
import { buildDataDiskImage } from '../../src/lab/demo';
import { limitLeaseTarget, type PlanResult } from '../../src/domain/plan';
import { parsePlan } from '../../src/cli/plan-file';
import { getPlanStatus, startPlan } from '../../src/client/plan';
import { getRestoreStatus } from '../../src/client/restore';
import type { VSphereClient } from '../../src/vsphere';
import { leaseStateQuery, leaseWorkflowId, type runRestorePlan } from '../../src/workflows';
import {
  importTestVm,
  openTestEnv,
  startWorkerProcess,
  writeZeroRestorePoint,
  type TestEnv,
  type WorkerProcess,
  runCli,
} from '../helpers/env';
import { labVSphere } from '../helpers/vsphere';

const MiB = 1024 * 1024;
let env: TestEnv;
let worker: WorkerProcess;
let vs: VSphereClient;
let tmp: string;
/** One all-zero 64 MiB disk and a NIC: restores to either target without chunk data. */
let zeroRp: string;
/** One thick 8 MiB disk of random data: a disk write that takes about 2 s at 4 MB/s. */
let smallRp: string;
/** One thick 32 MiB disk of random data: 32 s at 1 MB/s. */
let slowRp = '';
const uid = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 5)}`;

/** The vmrestore CLI against the lab on the test's task queue: exit code and output. */
const cli = (...args: string[]) => runCli(env.taskQueue, args);

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 180_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function writePlan(name: string, text: string): string {
  const file = path.join(tmp, `${name}.yaml`);
  writeFileSync(file, text);
  parsePlan(text, file);
  return file;
}

const millis = (t: temporal.api.history.v1.IHistoryEvent['eventTime']) => Number(t!.seconds) * 1000 + Math.floor((t!.nanos ?? 0) / 1e6);

/** Start and close times of each attempt's `writeDisk` in a restore's history. */
async function diskWrites(workflowId: string): Promise<Array<{ workflowId: string; start: number; end: number }>> {
  const events = (await env.client.workflow.getHandle(workflowId).fetchHistory()).events ?? [];
  const scheduled = new Map<string, string>();
  const started = new Map<string, number>();
  const out: Array<{ workflowId: string; start: number; end: number }> = [];
  for (const e of events) {
    const id = String(e.eventId);
    if (e.activityTaskScheduledEventAttributes) scheduled.set(id, e.activityTaskScheduledEventAttributes.activityType!.name!);
    const s = e.activityTaskStartedEventAttributes;
    if (s && scheduled.get(String(s.scheduledEventId)) === 'writeDisk') started.set(String(s.scheduledEventId), millis(e.eventTime));
    const c = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes ?? e.activityTaskTimedOutEventAttributes;
    if (c && started.has(String(c.scheduledEventId)))
      out.push({ workflowId, start: started.get(String(c.scheduledEventId))!, end: millis(e.eventTime) });
  }
  return out;
}

async function exists(workflowId: string): Promise<boolean> {
  try {
    await env.client.workflow.getHandle(workflowId).describe();
    return true;
  } catch (err) {
    if ((err as { name?: string }).name === 'WorkflowNotFoundError') return false;
    throw err;
  }
}

describe('restore plans', () => {
  before(async () => {
    env = await openTestEnv('plan');
    worker = await startWorkerProcess(env.taskQueue, {
      VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1',
      VMRESTORE_AZURE_LEASE_CHECK_SECONDS: '2',
    });
    vs = await labVSphere(env.config);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-plan-'));
    zeroRp = writeZeroRestorePoint(env.config.repository.path, 'plan-zero', [64 * MiB], [{ network: 'VM Network' }]).id;
    buildDataDiskImage(path.join(tmp, 'disk0.img'), 8 * MiB, [[0, 8 * MiB]], `plan-${uid}`);
    smallRp = await importTestVm(env.config.repository.path, tmp, {
      name: 'plan-small',
      disks: [{ path: 'disk0.img', provisioning: 'thick' }],
    });
    buildDataDiskImage(path.join(tmp, 'disk0.img'), 32 * MiB, [[0, 32 * MiB]], `plan-slow-${uid}`);
    slowRp = await importTestVm(env.config.repository.path, tmp, {
      name: 'plan-slow',
      disks: [{ path: 'disk0.img', provisioning: 'thick' }],
    });
  });
  after(async () => {
    await worker?.stop();
    await vs?.logout().catch(() => {});
    await env?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('groups run in order behind an approval gate, a datastore limit of 1 serialises disk writes, a re-run skips what was restored', async () => {
    // A restore point that appears only after the first run: its VM fails then and is retried by the re-run.
    const late = writeZeroRestorePoint(env.config.repository.path, 'plan-late', [64 * MiB], [{ network: 'VM Network' }]);
    const lateFile = path.join(env.config.repository.path, 'restore-points', `${late.id}.json`);
    const lateJson = readFileSync(lateFile);
    late.remove();
    const name = `order-${uid}`;
    const file = writePlan(
      name,
      `name: ${name}
limits:
  restoresPerPlan: 3
  disksPerDatastore: 1
defaults:
  vsphere:
    datastore: LocalDS_0
  azure:
    skipGuestPreparation: true
groups:
  - name: first
    gate: approval
    vms:
      - { restorePointId: ${zeroRp}, vmName: pa1-${uid} }
      - { target: azure, restorePointId: ${zeroRp}, vmName: pz1-${uid} }
  - name: second
    vms:
      - { restorePointId: ${smallRp}, vmName: pb1-${uid}, throttleMBps: 4 }
      - { restorePointId: ${smallRp}, vmName: pb2-${uid}, throttleMBps: 4 }
      - { restorePointId: ${smallRp}, vmName: pb3-${uid}, throttleMBps: 4 }
      - { restorePointId: ${late.id}, vmName: pb4-${uid} }
`,
    );
    const started = await cli('plan', 'start', file, '--json');
    assert.equal(started.code, 0, started.stderr);
    const planId = (JSON.parse(started.stdout.trim()) as { planId: string }).planId;
    assert.equal(planId, `plan-${name}`);

    const atGate = await waitFor('the approval gate', async () => {
      const s = await getPlanStatus(env.client, planId);
      return s.waiting?.gate === 'approval' ? s : undefined;
    });
    assert.deepEqual(
      atGate.vms.map((v) => [v.vmName, v.state]),
      [
        [`pa1-${uid}`, 'completed'],
        [`pz1-${uid}`, 'completed'],
        [`pb1-${uid}`, 'pending'],
        [`pb2-${uid}`, 'pending'],
        [`pb3-${uid}`, 'pending'],
        [`pb4-${uid}`, 'pending'],
      ],
    );
    // Held: a while later the second group has still not started a single restore.
    await new Promise((r) => setTimeout(r, 4000));
    for (const v of atGate.vms.slice(2)) assert.equal(await exists(v.workflowId), false, `${v.vmName} must not start before the approval`);
    const text = await cli('plan', 'status', name);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`waiting for 'vmrestore plan approve ${planId}'`));
    assert.match(text.stdout, new RegExp(`^1 +pa1-${uid} +vsphere completed +completed +64\\.0 MiB +\\S+ +skipped`, 'm'));
    assert.match(text.stdout, new RegExp(`^1 +pz1-${uid} +azure +completed +completed +0\\.0 MiB +upload +skipped`, 'm'));
    assert.match(text.stdout, new RegExp(`^2 +pb1-${uid} +vsphere pending`, 'm'));

    const approvedAt = Date.now();
    const approved = await cli('plan', 'approve', name);
    assert.equal(approved.code, 0, approved.stderr);
    assert.match(approved.stdout, /after group 1 \(first\)/);
    const again = await cli('plan', 'approve', name);
    assert.equal(again.code, 2, 'a second approve finds no gate waiting');
    assert.match(again.stderr, /not waiting for approval/);

    const result: PlanResult = await env.client.workflow.getHandle<typeof runRestorePlan>(planId).result();
    const state = Object.fromEntries(result.vms.map((v) => [v.vmName, v.state]));
    assert.deepEqual(state, {
      [`pa1-${uid}`]: 'completed',
      [`pz1-${uid}`]: 'completed',
      [`pb1-${uid}`]: 'completed',
      [`pb2-${uid}`]: 'completed',
      [`pb3-${uid}`]: 'completed',
      [`pb4-${uid}`]: 'failed',
    });
    assert.match(result.vms[5].error ?? '', new RegExp(late.id));

    // Order: every restore of the second group started after the first group's closed and after the approval.
    const times = await Promise.all(
      result.vms.map(async (v) => {
        const d = await env.client.workflow.getHandle(v.workflowId).describe();
        return { vm: v.vmName, start: d.startTime.getTime(), close: d.closeTime!.getTime(), runId: d.runId };
      }),
    );
    const firstClosed = Math.max(times[0].close, times[1].close);
    for (const t of times.slice(2)) {
      assert.ok(t.start >= firstClosed, `${t.vm} started ${t.start - firstClosed} ms before the first group closed`);
      assert.ok(t.start >= approvedAt - 1000, `${t.vm} started before the approval`);
    }

    // The limit: the three restores ran at once, yet no two of their disk writes on LocalDS_0 overlapped.
    const b = times.slice(2, 5);
    assert.ok(Math.max(...b.map((t) => t.start)) < Math.min(...b.map((t) => t.close)), 'the three restores overlapped in time');
    const writes = (await Promise.all(result.vms.slice(2, 5).map((v) => diskWrites(v.workflowId))))
      .flat()
      .sort((x, y) => x.start - y.start);
    assert.equal(writes.length, 3, JSON.stringify(writes));
    for (let i = 1; i < writes.length; i++) {
      assert.ok(
        writes[i].start >= writes[i - 1].end,
        `disk writes overlap: ${writes[i - 1].workflowId} ${writes[i - 1].start}-${writes[i - 1].end}, ${writes[i].workflowId} ${writes[i].start}-${writes[i].end}`,
      );
    }
    assert.ok(
      writes.every((w) => w.end - w.start >= 1500),
      `each write takes about 2 s at 4 MB/s: ${JSON.stringify(writes)}`,
    );
    const lease = leaseWorkflowId(limitLeaseTarget('datastore', 'lab/DC0/LocalDS_0'), env.taskQueue);
    const leaseState = await env.client.workflow.getHandle(lease).query(leaseStateQuery);
    assert.deepEqual(leaseState.holders, [], 'every slot released');

    // Re-run: the restore point is there now. The five restored VMs are skipped (same runs), the failed one retried.
    writeFileSync(lateFile, lateJson);
    const rerun = await cli('plan', 'start', file, '--wait', '--json');
    assert.equal(rerun.code, 0, `${rerun.stdout}\n${rerun.stderr}`);
    const final = JSON.parse(rerun.stdout.trim().split('\n').pop()!) as {
      status: string;
      vms: Array<{ vmName: string; state: string; workflowId: string }>;
    };
    assert.equal(final.status, 'COMPLETED');
    assert.deepEqual(
      final.vms.map((v) => v.state),
      ['skipped', 'skipped', 'skipped', 'skipped', 'skipped', 'completed'],
    );
    for (const [i, t] of times.entries()) {
      const d = await env.client.workflow.getHandle(result.vms[i].workflowId).describe();
      if (i < 5) assert.equal(d.runId, t.runId, `${t.vm} was not restored again`);
      else assert.notEqual(d.runId, t.runId, `${t.vm} was restored again`);
    }
    const dc = await vs.datacenter('DC0');
    assert.ok(await vs.findVmByName(dc, `pb4-${uid}`), 'the retried VM exists');
  });

  it('cancel undoes the running restore and starts no later group', async () => {
    const name = `cancel-${uid}`;
    const file = writePlan(
      name,
      `name: ${name}
limits: { disksPerDatastore: 2 }
groups:
  - name: first
    vms:
      - { restorePointId: ${slowRp}, vmName: ca1-${uid}, throttleMBps: 1 }
  - name: second
    vms:
      - { restorePointId: ${zeroRp}, vmName: cb1-${uid} }
`,
    );
    const started = await cli('plan', 'start', file);
    assert.equal(started.code, 0, started.stderr);
    const planId = `plan-${name}`;
    const child = `${planId}/vsphere-ca1-${uid}`;
    await waitFor('the first restore writing its disk', async () => {
      const s = await getRestoreStatus(env.client, child);
      return s.phase === 'writing-disks';
    });
    const cancelled = await cli('plan', 'cancel', name);
    assert.equal(cancelled.code, 0, cancelled.stderr);
    await assert.rejects(env.client.workflow.getHandle(planId).result(), /cancel/i);

    const status = await getPlanStatus(env.client, planId);
    assert.equal(status.status, 'CANCELED');
    assert.deepEqual(
      status.vms.map((v) => [v.vmName, v.state]),
      [
        [`ca1-${uid}`, 'cancelled'],
        [`cb1-${uid}`, 'not-started'],
      ],
    );
    assert.equal((await env.client.workflow.getHandle(child).describe()).status.name, 'CANCELLED');
    assert.equal(await exists(`${planId}/vsphere-cb1-${uid}`), false, 'the second group never started');
    const dc = await vs.datacenter('DC0');
    assert.equal(await vs.findVmByName(dc, `ca1-${uid}`), null, 'the cancelled restore destroyed its VM');
    const lease = leaseWorkflowId(limitLeaseTarget('datastore', 'lab/DC0/LocalDS_0'), env.taskQueue);
    const holders = (await env.client.workflow.getHandle(lease).query(leaseStateQuery)).holders;
    assert.ok(!holders.some((h) => h.includes(`ca1-${uid}`) || h.startsWith(child)), `no slot left held: ${holders.join(', ')}`);
  });

  it('a plan continues as new with its history bounded and its VMs’ states carried over', async () => {
    const name = `many-${uid}`;
    const vms = (g: number) =>
      Array.from({ length: 4 }, (_, i) => `      - { restorePointId: ${zeroRp}, vmName: m${g}${i}-${uid}, diskFormat: thin }`).join('\n');
    const plan = parsePlan(
      `name: ${name}\nlimits: { restoresPerPlan: 2 }\ngroups:\n  - name: a\n    vms:\n${vms(0)}\n  - name: b\n    vms:\n${vms(1)}\n`,
    );
    const maxHistoryEvents = 30;
    const handle = await startPlan(env.client, plan, { taskQueue: env.taskQueue, maxHistoryEvents });
    const result = await handle.result();
    assert.deepEqual(
      result.vms.map((v) => v.state),
      new Array(8).fill('completed'),
    );
    const runs = [];
    for await (const w of env.client.workflow.list({ query: `WorkflowId = '${handle.workflowId}'` })) runs.push(w);
    assert.ok(runs.length >= 2, `continued as new: ${runs.length} runs`);
    for (const r of runs) {
      // A run stops starting restores at the limit and lets the ones in flight (at most 2) finish.
      assert.ok(r.historyLength <= maxHistoryEvents + 20, `run ${r.runId} has ${r.historyLength} events`);
    }
    const status = await getPlanStatus(env.client, handle.workflowId);
    assert.equal(status.runs, runs.length);
    assert.equal(status.vms.filter((v) => v.state === 'completed').length, 8);
  });
});
