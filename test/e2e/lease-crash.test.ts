import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { temporal } from '@temporalio/proto';
import { startAzureRestore } from '../../src/client/restore';
import { leaseStateQuery, leaseWorkflowId } from '../../src/workflows';
import { openTestEnv, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { clearFaults, labArm, labAzure, setFaults } from '../helpers/azure';

type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

let env: TestEnv;
let worker: WorkerProcess;
const WORKER_ENV = { VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '2', VMRESTORE_AZURE_LEASE_CHECK_SECONDS: '2' };

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const eventTime = (e: HistoryEvent): number => {
  const t = e.eventTime!;
  return Number(t.seconds) * 1000 + Math.floor((t.nanos ?? 0) / 1e6);
};

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

const helperLeaseId = () => {
  const a = labAzure();
  return leaseWorkflowId({ kind: 'helper', name: `${a.location}-${a.helperVmName}` }, env.taskQueue);
};

async function helperPowerState(): Promise<string | undefined> {
  const a = labAzure();
  const view = await labArm().compute.virtualMachines.instanceView(a.resourceGroup, a.helperVmName);
  return view.statuses?.find((s) => s.code?.startsWith('PowerState/'))?.code;
}

describe('a crash costs seconds: heartbeating control activities and leases that outlive their holders', () => {
  before(async () => {
    env = await openTestEnv('lease');
    worker = await startWorkerProcess(env.taskQueue, WORKER_ENV);
  });
  after(async () => {
    await clearFaults().catch(() => {});
    await worker?.kill();
    await env?.close();
  });

  it('a worker SIGKILLed inside detachFromHelper costs about one heartbeat timeout, not the start-to-close timeout', async () => {
    // The second attach/detach call (the detach; the first is the attach) hangs for 60 s in ARM.
    await setFaults([{ kind: 'delay', method: 'POST', pathPattern: '/attachDetachDataDisks$', skip: 1, count: 1, delayMs: 60_000 }]);
    const vmName = `t-hbkill-${Date.now().toString(36)}`;
    const handle = await startAzureRestore(env.client, { restorePointId: env.demo['demo-linux'], vmName }, { taskQueue: env.taskQueue });
    await until('detachFromHelper to run', 180_000, async () => {
      const d = await handle.describe();
      return d.raw.pendingActivities?.some((p) => p.activityType?.name === 'detachFromHelper' && p.lastStartedTime);
    });
    await sleep(1000);
    const killedAt = Date.now();
    await worker.kill();
    worker = await startWorkerProcess(env.taskQueue, WORKER_ENV);
    const result = await handle.result();
    assert.equal(result.vmName, vmName);

    const events = (await handle.fetchHistory()).events ?? [];
    const scheduled = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'detachFromHelper')!;
    const hb = scheduled.activityTaskScheduledEventAttributes!.heartbeatTimeout;
    assert.ok(hb && Number(hb.seconds) <= 30, `detachFromHelper has a heartbeat timeout of at most 30 s (${hb?.seconds} s)`);
    const started = events.find((e) => String(e.activityTaskStartedEventAttributes?.scheduledEventId) === String(scheduled.eventId))!;
    const completed = events.find((e) => String(e.activityTaskCompletedEventAttributes?.scheduledEventId) === String(scheduled.eventId))!;
    assert.ok(completed, 'detachFromHelper completed');
    assert.equal(started.activityTaskStartedEventAttributes!.attempt, 2, 'the second attempt, on the new worker, finished it');
    const lost = (eventTime(completed) - killedAt) / 1000;
    console.log(`detachFromHelper: killed at +0 s, retried on the new worker and completed at +${lost.toFixed(1)} s`);
    assert.ok(lost < 60, `resumed within about one heartbeat timeout (${lost.toFixed(1)} s < 60 s)`);
    // Every activity the restore scheduled heartbeats within 30 s.
    for (const e of events.filter((x) => x.activityTaskScheduledEventAttributes)) {
      const a = e.activityTaskScheduledEventAttributes!;
      assert.ok(Number(a.heartbeatTimeout?.seconds ?? 999) <= 30, `${a.activityType?.name} heartbeats within 30 s`);
    }
    await clearFaults();
  });

  it('a restore terminated while holding the helper lease is dropped with its slots, and the helper powers off', async () => {
    const vmName = `t-dead-${Date.now().toString(36)}`;
    const handle = await startAzureRestore(env.client, { restorePointId: env.demo['demo-linux'], vmName }, { taskQueue: env.taskQueue });
    const lease = env.client.workflow.getHandle(helperLeaseId());
    // The lease holder is the restore id: the workflow id and its first run id (this run: nothing continues it).
    const holder = `${handle.workflowId}@${(await handle.describe()).runId}`;
    // Terminate once the restore holds the lease and the helper runs with its disk attached.
    await until('the restore to hold the running helper', 180_000, async () => {
      const s = await lease.query(leaseStateQuery).catch(() => undefined);
      return s?.holders.includes(holder) && s.poweredOn;
    });
    const held = await lease.query(leaseStateQuery);
    assert.equal(held.reserved?.[holder], 1, 'one slot reserved for the one-disk VM');
    assert.equal(held.owners?.[holder]?.workflowId, handle.workflowId, 'the holder is recorded with its workflow id');
    assert.ok(held.owners?.[holder]?.runId, 'and run id');
    const terminatedAt = Date.now();
    await handle.terminate('test: the restore dies without releasing');

    const end = await until('the lease to drop the dead holder and power the helper off', 60_000, async () => {
      const s = await lease.query(leaseStateQuery);
      return s.holders.length === 0 && !s.poweredOn && s;
    });
    const seconds = (Date.now() - terminatedAt) / 1000;
    console.log(`dead holder dropped and helper deallocated ${seconds.toFixed(1)} s after the terminate`);
    assert.deepEqual(end.reserved, {}, 'its slots are free again');
    assert.equal(end.droppedHolders, 1);
    assert.equal(await helperPowerState(), 'PowerState/deallocated', 'the helper VM is deallocated in ARM');
    const a = labAzure();
    const helper = await labArm().compute.virtualMachines.get(a.resourceGroup, a.helperVmName);
    assert.equal(helper.storageProfile?.dataDisks?.length ?? 0, 0, "the dead restore's disk was detached from the helper");
  });
});
