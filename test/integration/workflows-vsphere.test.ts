import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ApplicationFailure } from '@temporalio/common';
import type { WorkflowFailedError } from '@temporalio/client';
import type {
  CreatedVm,
  DiskCheckpoint,
  DiskWriteResult,
  ProxyCandidate,
  TransportMode,
  VSpherePlan,
  VSphereRestoreRequest,
} from '../../src/domain/vsphere';
import { FailureType } from '../../src/domain/errors';
import { restorePlan, restoreToVSphere } from '../../src/workflows';
import {
  historyEvents,
  scheduledActivities,
  startWorkflowTestEnv,
  type HistoryEvent,
  type ScheduledActivity,
  type WorkflowTestEnv,
} from '../helpers/workflow-env';
import { testDiskPlan, testVSpherePlan } from '../helpers/vsphere-plan';

/**
 * The vSphere restore workflow's decisions on a real Temporal server, with activities that only do
 * what each scenario says: the order of the steps, the transport fallback, the compensations, and the
 * plan's groups and concurrency, all read back from the workflow histories.
 */

interface Scenario {
  /** Transports each disk tries, in order. */
  transports: TransportMode[];
  disks?: number;
  powerOn?: boolean;
  keepOnFailure?: boolean;
  /** What writeDisk does for a transport: write (the default), or fail with this failure type. */
  failWith?: Partial<Record<TransportMode, string>>;
  /** Milliseconds each writeDisk takes: lets concurrent restores overlap. */
  writeMs?: number;
  /** The first this many writes fail with a retryable failure carrying a checkpoint 256 KiB further each time. */
  transientFailures?: number;
  /** Every writeDisk call's `previous` checkpoint offset, in order (filled in by the scenario). */
  previousOffsets?: Array<number | undefined>;
}

function planFor(req: VSphereRestoreRequest & { restoreId: string }, s: Scenario): VSpherePlan {
  return testVSpherePlan({
    restoreId: req.restoreId,
    restorePointId: req.restorePointId,
    vmName: req.vmName,
    proxy: 'proxy0',
    proxyVmName: 'proxy-vm',
    disks: Array.from({ length: s.disks ?? 1 }, (_, i) => testDiskPlan(i, 1 << 20, s.transports)),
    requiredBytes: 1 << 20,
    diskConcurrency: 2,
    powerOn: s.powerOn ?? false,
    keepOnFailure: s.keepOnFailure ?? req.keepOnFailure ?? false,
  });
}

/** vSphere activities that follow a scenario and touch nothing. */
function scenarioActivities(s: Scenario) {
  const ok = async (): Promise<void> => {};
  return {
    prepareVSphereRestore: async (req: VSphereRestoreRequest & { restoreId: string }) => planFor(req, s),
    createVm: async (plan: VSpherePlan): Promise<CreatedVm> => ({
      vmRef: `vm-${plan.vmName}`,
      vmName: plan.vmName,
      diskFiles: plan.disks.map((d) => `[LocalDS_0] ${plan.vmName}/${plan.vmName}_${d.diskIndex}.vmdk`),
      created: true,
    }),
    createSnapshot: ok,
    commitSnapshot: ok,
    powerOnVm: ok,
    destroyRestoredVm: ok,
    attachToProxy: ok,
    detachFromProxy: ok,
    vmHostName: async () => 'host0',
    // One proxy, always live and free: proxy choice and its slots have tests of their own.
    chooseProxy: async (req: { proxies: ProxyCandidate[] }) => ({ proxy: req.proxies[0], status: [] }),
    acquireLeaseActivity: ok,
    releaseLeaseActivity: ok,
    writeDisk: async (args: {
      diskIndex: number;
      diskFile: string;
      transport: TransportMode;
      previous?: DiskCheckpoint;
    }): Promise<DiskWriteResult> => {
      const calls = (s.previousOffsets ??= []);
      calls.push(args.previous?.offset);
      if (calls.length <= (s.transientFailures ?? 0)) {
        const checkpoint: DiskCheckpoint = {
          diskIndex: args.diskIndex,
          offset: calls.length * 256 * 1024,
          bytes: calls.length * 256 * 1024,
          transport: args.transport,
        };
        throw ApplicationFailure.create({
          type: FailureType.VSphereFault,
          message: 'the datastore went away for a moment',
          details: [checkpoint],
        });
      }
      const type = s.failWith?.[args.transport];
      if (type) throw ApplicationFailure.create({ type, message: `${args.transport} refused by the scenario`, nonRetryable: true });
      if (s.writeMs) await new Promise((r) => setTimeout(r, s.writeMs));
      return {
        diskIndex: args.diskIndex,
        transport: args.transport,
        bytesWritten: 1 << 20,
        bytesSkippedZero: 0,
        datastorePath: args.diskFile,
        flatPath: args.diskFile.replace('.vmdk', '-flat.vmdk'),
        resumedFromOffset: 0,
        seconds: 0,
      };
    },
  };
}

const request = (vmName: string, extra: Partial<VSphereRestoreRequest> = {}): VSphereRestoreRequest => ({
  restorePointId: 'rp-1',
  vmName,
  ...extra,
});

/** The proxy's disk writes, served on its own queue as in a deployment. */
const proxyWorkers = (s: Scenario) => ({ proxy0: { writeDisk: scenarioActivities(s).writeDisk } });

const SLOT_BOOKKEEPING = ['chooseProxy', 'acquireLeaseActivity', 'releaseLeaseActivity'];
const types = (acts: ScheduledActivity[]) => acts.map((a) => a.type).filter((t) => !SLOT_BOOKKEEPING.includes(t));
const writes = (acts: ScheduledActivity[]) =>
  acts.filter((a) => a.type === 'writeDisk').map((a) => (a.input[0] as { transport: TransportMode }).transport);

describe('the vSphere restore workflow, read from its history', { timeout: 180_000 }, () => {
  let t: WorkflowTestEnv;
  before(async () => {
    t = await startWorkflowTestEnv();
  });
  after(async () => {
    await t?.teardown();
  });

  /** Runs one restore; returns its activities as scheduled, and its result or failure. */
  async function restore(s: Scenario, req: VSphereRestoreRequest) {
    return t.withWorker(
      scenarioActivities(s),
      async (taskQueue) => {
        const handle = await t.env.client.workflow.start(restoreToVSphere, { taskQueue, workflowId: `restore-${req.vmName}`, args: [req] });
        const outcome = await handle.result().then(
          (result) => ({ result, error: undefined }),
          (error: WorkflowFailedError) => ({ result: undefined, error }),
        );
        return { ...outcome, acts: scheduledActivities(await historyEvents(handle)) };
      },
      proxyWorkers(s),
    );
  }

  it('writes every disk after createSnapshot has completed and commits the snapshot after the last write, then powers on', async () => {
    const { result, error, acts } = await restore({ transports: ['direct-nas'], disks: 3, powerOn: true }, request('order'));
    assert.equal(error, undefined);
    assert.deepEqual(types(acts), [
      'prepareVSphereRestore',
      'createVm',
      'createSnapshot',
      'writeDisk',
      'writeDisk',
      'writeDisk',
      'commitSnapshot',
      'powerOnVm',
    ]);
    const snapshot = acts.find((a) => a.type === 'createSnapshot')!;
    const commit = acts.find((a) => a.type === 'commitSnapshot')!;
    const diskWrites = acts.filter((a) => a.type === 'writeDisk');
    for (const w of diskWrites) {
      assert.ok(w.eventId > snapshot.endedEventId!, `writeDisk scheduled at event ${w.eventId}, snapshot done at ${snapshot.endedEventId}`);
      assert.ok(w.endedEventId! < commit.eventId, `writeDisk done at event ${w.endedEventId}, commit scheduled at ${commit.eventId}`);
    }
    assert.deepEqual(diskWrites.map((w) => (w.input[0] as { diskIndex: number }).diskIndex).sort(), [0, 1, 2]);
    assert.equal(result?.poweredOn, true);
  });

  it('leaves the VM off when the request does not ask for power-on', async () => {
    const { acts, result } = await restore({ transports: ['direct-nas'], powerOn: false }, request('off'));
    assert.ok(!types(acts).includes('powerOnVm'), types(acts).join(', '));
    assert.equal(result?.poweredOn, false);
  });

  it('falls back to the next transport when one reports TransportUnavailable, detaching the HotAdd disk first', async () => {
    const s: Scenario = {
      transports: ['direct-san', 'hotadd', 'nbd'],
      failWith: { 'direct-san': FailureType.TransportUnavailable, hotadd: FailureType.TransportUnavailable },
    };
    const { acts, error } = await restore(s, request('fallback'));
    assert.equal(error, undefined);
    assert.deepEqual(writes(acts), ['direct-san', 'hotadd', 'nbd']);
    assert.deepEqual(types(acts).slice(3, 9), [
      'writeDisk',
      'attachToProxy',
      'writeDisk',
      'detachFromProxy',
      'writeDisk',
      'commitSnapshot',
    ]);
  });

  it('retries a write that failed on a transient error itself, each time from the checkpoint the failure carries', async () => {
    const s: Scenario = { transports: ['hotadd'], transientFailures: 2 };
    const { acts, error, result } = await restore(s, request('transient'));
    assert.equal(error, undefined, String(error));
    assert.equal(result?.disks[0].transport, 'hotadd');
    // Three single-attempt writes on the proxy's queue: the first from the start, then from each failure's checkpoint.
    assert.deepEqual(writes(acts), ['hotadd', 'hotadd', 'hotadd']);
    assert.deepEqual(s.previousOffsets, [undefined, 256 * 1024, 512 * 1024]);
    assert.ok(types(acts).includes('commitSnapshot'));
  });

  it('does not fall back on any other failure: the restore fails and its VM is destroyed', async () => {
    const s: Scenario = { transports: ['direct-nas', 'nbd'], failWith: { 'direct-nas': FailureType.InsufficientSpace } };
    const { acts, error } = await restore(s, request('nofallback'));
    assert.ok(error, 'the restore failed');
    assert.deepEqual(writes(acts), ['direct-nas']);
    assert.ok(!types(acts).includes('commitSnapshot'));
    assert.equal(types(acts).at(-1), 'destroyRestoredVm');
  });

  it('with keepOnFailure, detaches the HotAdd disk from the proxy after a failed write and keeps the VM', async () => {
    const s: Scenario = { transports: ['hotadd'], keepOnFailure: true, failWith: { hotadd: FailureType.RepositoryCorrupt } };
    const { acts, error } = await restore(s, request('keep', { keepOnFailure: true }));
    assert.ok(error, 'the restore failed');
    const write = acts.find((a) => a.type === 'writeDisk')!;
    const detach = acts.find((a) => a.type === 'detachFromProxy');
    assert.ok(detach, `detachFromProxy scheduled: ${types(acts).join(', ')}`);
    assert.ok(detach.eventId > write.endedEventId!, 'detached after the write failed');
    assert.equal(detach.outcome, 'completed');
    assert.ok(!types(acts).includes('destroyRestoredVm'), 'the VM is kept');
  });
});

describe('a restore plan, read from its history', { timeout: 180_000 }, () => {
  let t: WorkflowTestEnv;
  before(async () => {
    t = await startWorkflowTestEnv();
  });
  after(async () => {
    await t?.teardown();
  });

  it('runs its groups in order and at most `concurrency` VMs of a group at once', async () => {
    const groups = [['a1', 'a2', 'a3', 'a4', 'a5'].map((n) => request(n)), [request('b1'), request('b2')]];
    const scenario: Scenario = { transports: ['direct-nas'], writeMs: 500 };
    const events: HistoryEvent[] = await t.withWorker(
      scenarioActivities(scenario),
      async (taskQueue) => {
        const handle = await t.env.client.workflow.start(restorePlan, {
          taskQueue,
          workflowId: 'plan-groups',
          args: [{ groups, concurrency: 2 }],
        });
        const result = await handle.result();
        assert.deepEqual(
          result.results.map((r) => [r.vmName, r.error]).sort(),
          ['a1', 'a2', 'a3', 'a4', 'a5', 'b1', 'b2'].map((n) => [n, undefined]),
        );
        return historyEvents(handle);
      },
      proxyWorkers(scenario),
    );

    // Children by the plan's history: initiated (started) and completed, in event order.
    const nameOf = new Map<number, string>();
    const open = new Set<string>();
    const done = new Set<string>();
    let most = 0;
    for (const e of events) {
      const init = e.startChildWorkflowExecutionInitiatedEventAttributes;
      if (init) {
        const vm = init.workflowId!.split('-').at(-1)!;
        nameOf.set(Number(e.eventId), vm);
        if (vm.startsWith('b')) assert.equal(done.size, 5, `${vm} started after ${[...done].join(', ')} of group 1 had completed`);
        open.add(vm);
        most = Math.max(most, open.size);
      }
      const closed = e.childWorkflowExecutionCompletedEventAttributes ?? e.childWorkflowExecutionFailedEventAttributes;
      if (closed) {
        const vm = nameOf.get(Number(closed.initiatedEventId))!;
        open.delete(vm);
        done.add(vm);
      }
    }
    assert.equal(done.size, 7);
    assert.equal(most, 2, 'two children of a group ran at once, never more');
  });
});
