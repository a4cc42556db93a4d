import { RestoreTracker } from './progress';
import {
  ApplicationFailure,
  CancellationScope,
  isCancellation,
  patched,
  proxyActivities,
  sleep,
  workflowInfo,
  ActivityFailure,
  TimeoutFailure,
} from '@temporalio/workflow';
import type { VSphereActivities } from '../activities/vsphere';
import type { ProxySlotActivities } from '../activities/vsphere/proxy-slots';
import type { AzureActivities } from '../activities/azure';
import { FailureType } from '../domain/errors';
import { controlOptions, leaseWaitOptions, NON_RETRYABLE, transferOptions } from './activity-options';
import type { DiskProgress, RestorePhase } from '../domain/progress';
import type {
  DiskCheckpoint,
  DiskPlan,
  DiskWriteResult,
  ProxyCandidate,
  VSpherePlan,
  VSphereRestoreRequest,
  VSphereRestoreResult,
} from '../domain/vsphere';
import { proxySlotTarget } from '../domain/proxy-slots';
import { proxyTaskQueue } from '../domain/task-queues';
import type { RestoreVerification } from '../domain/verification';
import { markVerification, verifyRestoredBoot } from './restore-verify';
import { limitLeaseTarget } from '../domain/plan';
import { withLimits, type HeldLimit } from './limits';
import { allOrNone, Saga } from './saga';

const control = proxyActivities<VSphereActivities>(controlOptions('vsphere'));

const proxyChoice = proxyActivities<ProxySlotActivities>(controlOptions('vsphere'));
// Waiting for a free proxy (or a slot's lease) may take long, heartbeating.
const proxyWait = proxyActivities<ProxySlotActivities>(leaseWaitOptions());
const slotLease = proxyActivities<AzureActivities>(leaseWaitOptions());
const slotRelease = proxyActivities<AzureActivities>(controlOptions('lease'));

/**
 * How long a disk write may sit on a proxy's queue before it counts as lost: a proxy holding a slot has
 * a worker idle for it, so only a dead one leaves the task unstarted. After a heartbeat timeout the retry
 * waits this long on the lost proxy's queue, then the disk moves on.
 */
const PROXY_START_TIMEOUT = '5 seconds';
/** Proxies a disk may lose before its restore gives up. */
const MAX_PROXY_LOSSES = 20;

/** Failed writes (other than a lost proxy) the workflow retries, from the checkpoint the failure carries. */
const WRITE_RETRIES = 10;

/**
 * The writer must have stopped before compensation deletes the disk under it (WAIT_CANCELLATION_COMPLETED).
 * `once`: a single attempt, retried by the workflow: a server-side retry goes to the same proxy's queue,
 * where a host that was cut off still holds long polls the server believes in, so the retry would wait
 * for that host to come back instead of moving to a live proxy.
 */
const diskWriter = (summary: string, proxy: string, once: boolean) => {
  const options = transferOptions(summary, {
    taskQueue: proxyTaskQueue(workflowInfo().taskQueue, proxy),
    scheduleToStartTimeout: PROXY_START_TIMEOUT,
  });
  return proxyActivities<VSphereActivities>(once ? { ...options, retry: { ...options.retry, maximumAttempts: 1 } } : options);
};

function failureType(err: unknown): string | undefined {
  const cause = err instanceof ActivityFailure ? err.cause : err;
  return cause instanceof ApplicationFailure ? (cause.type ?? undefined) : undefined;
}

/**
 * Full VM restore to vSphere, following the seed's phases: initialization → VM configuration and
 * registration → snapshot → disk data transport → snapshot commit (→ optional power on).
 */
export async function restoreToVSphere(request: VSphereRestoreRequest): Promise<VSphereRestoreResult> {
  const info = workflowInfo();
  // Unique per run (the first run id survives reset), so a reused workflow id never adopts an earlier run's VM.
  // Restores started before this rule keep the id they began with.
  const restoreId = patched('restore-id-per-run')
    ? `${request.restoreId ?? info.workflowId}@${info.firstExecutionRunId}`
    : (request.restoreId ?? info.workflowId);
  const tracker = new RestoreTracker('vsphere', restoreId, request.vmName, request.keepOnFailure ?? false);
  const setPhase = (phase: RestorePhase, message?: string) => tracker.phase(phase, message);

  const plan: VSpherePlan = await control.prepareVSphereRestore({ ...request, restoreId });
  tracker.target(`${plan.datacenter}/${plan.datastore}`);
  tracker.disks(plan.disks.map((d) => ({ diskIndex: d.diskIndex, label: d.label, capacityBytes: d.capacityBytes })));

  const saga = new Saga();
  try {
    setPhase('creating-vm', `${plan.vmName} on ${plan.datastore}`);
    // Registered before the call: a create that completes after a cancel is still undone.
    saga.add(`destroy VM '${plan.vmName}'`, () => control.destroyRestoredVm({ plan }));
    const vm = await control.createVm(plan);

    setPhase('creating-snapshot');
    await control.createSnapshot({ plan, vmRef: vm.vmRef });

    // Limits shared with other restores (a plan's): each disk write holds a slot of its datastore, then its host.
    const limits: HeldLimit[] = [];
    if (request.limits?.disksPerDatastore) {
      const target = limitLeaseTarget('datastore', `${plan.profile}/${plan.datacenter}/${plan.datastore}`);
      limits.push({ target, capacity: request.limits.disksPerDatastore });
    }
    if (request.limits?.disksPerHost) {
      const host = await control.vmHostName({ plan, vmRef: vm.vmRef });
      limits.push({ target: limitLeaseTarget('host', `${plan.profile}/${host}`), capacity: request.limits.disksPerHost });
    }

    setPhase('writing-disks');
    const results: DiskWriteResult[] = new Array(plan.disks.length);
    const disks = new DiskLanes(plan, vm.vmRef, saga, limits, tracker);
    let next = 0;
    const lane = async () => {
      while (next < plan.disks.length) {
        const disk = plan.disks[next++];
        results[disk.diskIndex] = await disks.write(disk, vm.diskFiles[disk.diskIndex]);
      }
    };
    // The first failed disk stops the others; all lanes settle before any compensation starts.
    await allOrNone(Array.from({ length: Math.min(plan.diskConcurrency, plan.disks.length) }, () => lane));

    setPhase('committing-snapshot');
    await control.commitSnapshot({ plan, vmRef: vm.vmRef });

    // Verified before power-on: the flat extents are what was written, with no running VM changing them.
    let verification: RestoreVerification = { status: 'skipped' };
    if (request.verify) {
      setPhase('verifying-boot', `${plan.vmName} booted from the datastore in the verification lab`);
      verification = await verifyRestoredBoot(
        { target: 'vsphere', plan, vmRef: vm.vmRef, network: request.verifyNetwork, timeoutSeconds: request.verifyTimeoutSeconds },
        request.keepOnVerifyFailure ?? false,
        `VM '${plan.vmName}'`,
      );
    } else {
      markVerification('skipped');
    }

    // A VM that did not boot in the lab and was only kept for a look is not started.
    const powerOn = plan.powerOn && verification.status !== 'failed';
    if (powerOn) {
      setPhase('powering-on');
      await control.powerOnVm({ plan, vmRef: vm.vmRef });
    }
    setPhase('completed', verification.kept ? 'boot verification failed; VM kept (keepOnVerifyFailure)' : undefined);
    return {
      restoreId,
      vmName: plan.vmName,
      vmRef: vm.vmRef,
      datastore: plan.datastore,
      proxy: results[0]?.proxy ?? plan.proxy,
      poweredOn: powerOn,
      disks: results,
      verification,
    };
  } catch (err) {
    const cancelled = isCancellation(err);
    if (!plan.keepOnFailure && saga.size > 0) {
      setPhase('compensating', cancelled ? 'restore cancelled' : 'restore failed');
      await saga.compensate();
    }
    setPhase(cancelled ? 'cancelled' : 'failed', err instanceof Error ? err.message : String(err));
    throw err;
  }
}

/** The proxies a disk may go to; a plan made before proxies were chosen per disk names one. */
function candidatesFor(plan: VSpherePlan, disk: DiskPlan): ProxyCandidate[] {
  return plan.proxies ?? [{ name: plan.proxy, vmName: plan.proxyVmName, transports: disk.transports, maxTasks: plan.diskConcurrency }];
}

/** A disk write that ended because its proxy was lost (its worker stopped heartbeating or never started it). */
function lostProxyCheckpoint(err: unknown): { lost: true; silent: boolean; checkpoint?: DiskCheckpoint } | undefined {
  if (!(err instanceof ActivityFailure) || err.activityType !== 'writeDisk' || !(err.cause instanceof TimeoutFailure)) return undefined;
  const details = err.cause.lastHeartbeatDetails as DiskCheckpoint | undefined;
  // Silent: the write started and stopped heartbeating (a dead worker, or a host cut off for a while).
  const silent = err.cause.timeoutType !== 'SCHEDULE_TO_START';
  return { lost: true, silent, checkpoint: details && typeof details.offset === 'number' ? details : undefined };
}

/** A disk write that failed in a way another attempt may fix, with the checkpoint it reached. */
function retryableWrite(err: unknown): { checkpoint?: DiskCheckpoint } | undefined {
  if (!(err instanceof ActivityFailure) || err.activityType !== 'writeDisk') return undefined;
  const cause = err.cause;
  if (!(cause instanceof ApplicationFailure) || cause.nonRetryable || NON_RETRYABLE.includes(cause.type ?? '')) return undefined;
  const details = cause.details?.[0] as DiskCheckpoint | undefined;
  return { checkpoint: details && typeof details.offset === 'number' ? details : undefined };
}

/**
 * The disks of one restore, each written on a proxy with a live worker and a free task slot (held through
 * the proxy's slot lease while it writes), moved to another proxy from its last checkpoint when its proxy
 * is lost. Choosing and taking a slot happen one disk at a time, so this restore's disks spread.
 */
class DiskLanes {
  private turn: Promise<void> = Promise.resolve();
  private waiting = 0;
  /** Single-attempt writes, retried here: a heartbeat timeout moves the disk to a live proxy at once. */
  private readonly ownRetries = patched('proxy-writes-retried-by-the-workflow');

  constructor(
    private readonly plan: VSpherePlan,
    private readonly vmRef: string,
    private readonly saga: Saga,
    private readonly limits: HeldLimit[],
    private readonly tracker: RestoreTracker,
  ) {}

  async write(disk: DiskPlan, diskFile: string): Promise<DiskWriteResult> {
    const row = this.tracker.progress.disks[disk.diskIndex];
    const holder = `${this.plan.restoreId}/disk${disk.diskIndex}`;
    const lost: Record<string, number> = {};
    const failedOver: string[] = [];
    let previous: DiskCheckpoint | undefined;
    let retries = 0;
    /** Backoff before the next try, after a failed write (not after a lost proxy). */
    let pauseMs = 0;
    /** A proxy that went silent: tried once more when no other is live, as a retry on its queue would be. */
    let retrySame: string | undefined;
    for (;;) {
      if (pauseMs > 0) await sleep(pauseMs);
      pauseMs = 0;
      const proxy = await this.oneAtATime(() => this.takeSlot(disk, row, holder, lost, retrySame));
      retrySame = undefined;
      const target = proxySlotTarget(proxy.name);
      try {
        row.state = 'writing';
        row.proxy = proxy.name;
        const result = await this.writeOn(proxy, disk, diskFile, row, holder, previous);
        row.state = 'done';
        row.bytesDone = row.bytesTotal;
        if (this.waiting === 0) this.tracker.phase('writing-disks');
        return failedOver.length > 0 ? { ...result, failedOver } : result;
      } catch (err) {
        const loss = lostProxyCheckpoint(err);
        const again = this.ownRetries && !loss && !isCancellation(err) ? retryableWrite(err) : undefined;
        if (again && retries < WRITE_RETRIES) {
          retries++;
          pauseMs = Math.min(30_000, 1000 * 2 ** (retries - 1));
          previous = again.checkpoint ?? previous;
          this.tracker.phase(
            'writing-disks',
            `disk ${disk.diskIndex} on proxy '${proxy.name}' failed (${(err as ActivityFailure).cause?.message ?? String(err)}); retry ${retries} from ${previous?.offset ?? 0} bytes`,
          );
          continue;
        }
        if (!loss || isCancellation(err) || failedOver.length >= MAX_PROXY_LOSSES) throw err;
        lost[proxy.name] = Date.now();
        if (this.ownRetries && loss.silent) retrySame = proxy.name;
        failedOver.push(proxy.name);
        previous = loss.checkpoint ?? previous;
        this.tracker.phase(
          this.waiting > 0 ? 'waiting-for-proxy' : 'writing-disks',
          `proxy '${proxy.name}' lost while writing disk ${disk.diskIndex}; continuing from ${previous?.offset ?? 0} bytes`,
        );
      } finally {
        await CancellationScope.nonCancellable(() => slotRelease.releaseLeaseActivity({ target, holder }));
      }
    }
  }

  /** Runs `fn` after every earlier call has finished, in call order. */
  private oneAtATime<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.turn.then(fn);
    this.turn = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** Chooses a proxy (waiting while none is free) and takes one of its slots. */
  private async takeSlot(
    disk: DiskPlan,
    row: DiskProgress,
    holder: string,
    lost: Record<string, number>,
    retrySame?: string,
  ): Promise<ProxyCandidate> {
    const proxies = candidatesFor(this.plan, disk);
    let choice = await proxyChoice.chooseProxy({ proxies, lost, holder });
    // No other live proxy: the silent one once more (its worker may be back, or only slow); a dead one
    // leaves the write unstarted, and the schedule-to-start timeout brings the disk back here.
    const same = retrySame === undefined ? undefined : proxies.find((p) => p.name === retrySame);
    if (!choice.proxy && same) choice = { ...choice, proxy: same };
    if (!choice.proxy) {
      row.state = 'waiting-for-proxy';
      this.waiting++;
      this.tracker.phase('waiting-for-proxy', `disk ${disk.diskIndex}: ${choice.waiting}`);
      try {
        choice = await proxyWait.chooseProxy({
          proxies,
          lost,
          holder,
          wait: true,
          since: Date.now(),
          noLiveLimitSeconds: this.plan.proxyWaitSeconds,
        });
      } finally {
        this.waiting--;
      }
      if (this.waiting === 0) this.tracker.phase('writing-disks');
    }
    const proxy = choice.proxy!;
    // Counted as held from here: the release in write() runs whatever happens to the acquire.
    await slotLease.acquireLeaseActivity({
      target: proxySlotTarget(proxy.name),
      holder,
      request: { slots: 1, capacity: proxy.maxTasks, powerOn: false },
    });
    return proxy;
  }

  /** Writes the disk on one proxy, trying its transports in order (the next on TransportUnavailable). */
  private async writeOn(
    proxy: ProxyCandidate,
    disk: DiskPlan,
    diskFile: string,
    row: DiskProgress,
    holder: string,
    previous: DiskCheckpoint | undefined,
  ): Promise<DiskWriteResult> {
    const { diskIndex } = disk;
    // The activities that act for a proxy read it from the plan.
    const plan: VSpherePlan = { ...this.plan, proxy: proxy.name, proxyVmName: proxy.vmName };
    let lastError: unknown;
    for (const transport of proxy.transports) {
      row.transport = transport;
      const writer = diskWriter(
        `write disk ${diskIndex} (${row.label}) via ${transport} on proxy ${proxy.name}`,
        proxy.name,
        this.ownRetries,
      );
      const write = () =>
        withLimits(this.limits, holder, () => writer.writeDisk({ plan, vmRef: this.vmRef, diskIndex, diskFile, transport, previous }));
      try {
        if (transport === 'hotadd') {
          const detach = () => control.detachFromProxy({ plan, diskFiles: [diskFile] });
          const undoAttach = this.saga.add(`detach disk ${diskIndex} from proxy ${proxy.name}`, detach);
          await control.attachToProxy({ plan, diskFile, diskIndex });
          try {
            return await write();
          } finally {
            // Always unmap the disk from the proxy, also when the write failed, was cancelled or the proxy was lost.
            await CancellationScope.nonCancellable(detach);
            this.saga.remove(undoAttach);
          }
        }
        return await write();
      } catch (err) {
        if (failureType(err) !== FailureType.TransportUnavailable || isCancellation(err)) throw err;
        lastError = err;
      }
    }
    throw lastError;
  }
}
