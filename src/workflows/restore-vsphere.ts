import { RestoreTracker } from './progress';
import {
  ApplicationFailure,
  CancellationScope,
  isCancellation,
  patched,
  proxyActivities,
  workflowInfo,
  ActivityFailure,
} from '@temporalio/workflow';
import type { VSphereActivities } from '../activities/vsphere';
import { FailureType } from '../domain/errors';
import { controlOptions, transferOptions } from './activity-options';
import type { DiskProgress, RestorePhase } from '../domain/progress';
import type { DiskWriteResult, TransportMode, VSpherePlan, VSphereRestoreRequest, VSphereRestoreResult } from '../domain/vsphere';
import type { RestoreVerification } from '../domain/verification';
import { markVerification, verifyRestoredBoot } from './restore-verify';
import { limitLeaseTarget } from '../domain/plan';
import { withLimits, type HeldLimit } from './limits';
import { Saga } from './saga';

const control = proxyActivities<VSphereActivities>(controlOptions('vsphere'));

// The writer must have stopped before compensation deletes the disk under it (WAIT_CANCELLATION_COMPLETED).
const diskWriter = (summary: string) => proxyActivities<VSphereActivities>(transferOptions(summary));

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
  const progress = tracker.progress;
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
    let next = 0;
    const lane = async () => {
      while (next < plan.disks.length) {
        const disk = plan.disks[next++];
        const row = progress.disks[disk.diskIndex];
        row.state = 'writing';
        results[disk.diskIndex] = await writeOneDisk(
          plan,
          vm.vmRef,
          vm.diskFiles[disk.diskIndex],
          disk.diskIndex,
          disk.transports,
          row,
          saga,
          limits,
        );
        row.state = 'done';
        row.bytesDone = row.bytesTotal;
        setPhase('writing-disks');
      }
    };
    // The first failed disk stops the others; all lanes settle before any compensation starts.
    let firstError: unknown;
    const writes = new CancellationScope();
    await writes.run(() =>
      Promise.all(
        Array.from({ length: Math.min(plan.diskConcurrency, plan.disks.length) }, () =>
          lane().catch((err: unknown) => {
            firstError ??= err;
            writes.cancel();
          }),
        ),
      ),
    );
    if (firstError !== undefined) throw firstError;

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
      proxy: plan.proxy,
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

async function writeOneDisk(
  plan: VSpherePlan,
  vmRef: string,
  diskFile: string,
  diskIndex: number,
  transports: TransportMode[],
  row: DiskProgress,
  saga: Saga,
  limits: HeldLimit[],
): Promise<DiskWriteResult> {
  let lastError: unknown;
  const holder = `${plan.restoreId}/disk${diskIndex}`;
  for (const transport of transports) {
    row.transport = transport;
    const writer = diskWriter(`write disk ${diskIndex} (${row.label}) via ${transport}`);
    try {
      if (transport === 'hotadd') {
        const detach = () => control.detachFromProxy({ plan, diskFiles: [diskFile] });
        const undoAttach = saga.add(`detach disk ${diskIndex} from proxy ${plan.proxy}`, detach);
        await control.attachToProxy({ plan, diskFile, diskIndex });
        try {
          return await withLimits(limits, holder, () => writer.writeDisk({ plan, vmRef, diskIndex, diskFile, transport }));
        } finally {
          // Always unmap the disk from the proxy, also when the write failed or was cancelled.
          await CancellationScope.nonCancellable(detach);
          saga.remove(undoAttach);
        }
      }
      return await withLimits(limits, holder, () => writer.writeDisk({ plan, vmRef, diskIndex, diskFile, transport }));
    } catch (err) {
      if (failureType(err) !== FailureType.TransportUnavailable || isCancellation(err)) throw err;
      lastError = err;
    }
  }
  throw lastError;
}
