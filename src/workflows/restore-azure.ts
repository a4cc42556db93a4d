import { RestoreTracker } from './progress';
import { type ActivityOptions, patched, CancellationScope, isCancellation, proxyActivities, workflowInfo } from '@temporalio/workflow';
import type { AzureActivities } from '../activities/azure';
import type { AzureDiskResult, AzurePlan, AzureRestoreRequest, AzureRestoreResult } from '../domain/azure';
import { controlOptions, leaseWaitOptions, transferOptions } from './activity-options';
import type { RestorePhase } from '../domain/progress';
import type { GuestChange } from '../guest/types';
import type { RestoreVerification } from '../domain/verification';
import { markVerification, verifyRestoredBoot } from './restore-verify';
import { limitLeaseTarget } from '../domain/plan';
import { acquireLimits, withLimits, type HeldLimit } from './limits';
import { allOrNone, logUndoFailure, Saga, type Compensation } from './saga';

const control = proxyActivities<AzureActivities>(controlOptions('azure'));
// Acquires may wait for other restores to free the appliance's slots.
const lease = proxyActivities<AzureActivities>(leaseWaitOptions());

const longRunning = (summary: string, where?: Pick<ActivityOptions, 'taskQueue' | 'scheduleToStartTimeout'>) =>
  proxyActivities<AzureActivities>(transferOptions(summary, where));

type AzurePhase =
  | RestorePhase
  | 'powering-on-proxy'
  | 'waiting-for-proxy'
  | 'uploading'
  | 'preparing-guest'
  | 'registering-vm'
  | 'installing-agent';

/**
 * Restore to Microsoft Azure, in the seed's order (a named proxy's worker carries the VHD uploads).
 * Windows: proxy on → VHD upload → mount and prepare on
 * the backup server → unmount → proxy released → VM registered and powered on → agent installed.
 * Linux: proxy on → VHD upload → disks attached to the helper appliance → helper started → prepared →
 * detached, helper powered off → proxy released → VM registered and powered on.
 */
export async function restoreToAzure(request: AzureRestoreRequest): Promise<AzureRestoreResult> {
  const info = workflowInfo();
  // Unique per run (the first run id survives reset), so a reused workflow id never adopts an earlier run's resources.
  // Restores started before this rule keep the id they began with.
  const restoreId = patched('restore-id-per-run')
    ? `${request.restoreId ?? info.workflowId}@${info.firstExecutionRunId}`
    : (request.restoreId ?? info.workflowId);
  const tracker = new RestoreTracker('azure', restoreId, request.vmName, request.keepOnFailure ?? false);
  const progress = tracker.progress;
  const setPhase = (phase: AzurePhase, message?: string) => tracker.phase(phase, message);

  const plan: AzurePlan = await control.prepareAzureRestore({ ...request, restoreId });
  tracker.target(`${plan.resourceGroup}/${plan.location}`);
  tracker.disks(plan.disks);

  const saga = new Saga();
  const holder = restoreId;
  let proxyHeld = false;
  const releaseProxy = async () => {
    if (plan.proxy && proxyHeld) {
      await control.releaseLeaseActivity({ target: plan.proxy, holder });
      proxyHeld = false;
    }
  };
  // Limits shared with other restores (a plan's): a slot of the subscription's region for the whole restore,
  // and one of the storage account per VHD upload.
  const region = request.limits?.restoresPerRegion;
  const account = request.limits?.uploadsPerStorageAccount;
  const uploadLimits: HeldLimit[] = account
    ? [{ target: limitLeaseTarget('storage-account', plan.storageAccountId.split('/').pop() ?? plan.storageAccountId), capacity: account }]
    : [];
  let releaseRegion: (() => Promise<void>) | undefined;
  let regionHeld: Compensation | undefined;
  try {
    if (region) {
      setPhase('initializing', `waiting for a restore slot in ${plan.location}`);
      releaseRegion = await acquireLimits(
        [{ target: limitLeaseTarget('region', `${plan.subscriptionId}/${plan.location}`), capacity: region }],
        holder,
      );
      regionHeld = saga.add(`release the restore slot in ${plan.location}`, releaseRegion);
    }
    if (plan.proxy) {
      setPhase('powering-on-proxy', plan.proxy.vmName);
      saga.add(`release proxy ${plan.proxy.vmName}`, releaseProxy);
      proxyHeld = true;
      await lease.acquireLeaseActivity({ target: plan.proxy, holder });
    }
    // The uploads run inside the proxy VM, on its worker's queue: wait for that worker, visibly, instead of
    // leaving them unpicked (or running them here).
    let uploadsOn: Pick<ActivityOptions, 'taskQueue' | 'scheduleToStartTimeout'> | undefined;
    if (plan.proxy && plan.proxyTaskQueue) {
      const wait = plan.proxyWorkerWaitSeconds ?? 900;
      setPhase('waiting-for-proxy', `for the worker in Azure proxy ${plan.proxy.vmName} to poll task queue '${plan.proxyTaskQueue}'`);
      await lease.waitForAzureProxyWorker({
        proxy: plan.proxy.name,
        vmName: plan.proxy.vmName,
        taskQueue: plan.proxyTaskQueue,
        timeoutSeconds: wait,
      });
      uploadsOn = { taskQueue: plan.proxyTaskQueue, scheduleToStartTimeout: `${wait} seconds` };
    }

    setPhase('uploading', uploadsOn ? `on Azure proxy ${plan.proxy!.vmName}` : undefined);
    const uploads: AzureDiskResult[] = [];
    for (const disk of plan.disks)
      saga.add(`delete the VHD blob of disk ${disk.diskIndex}`, () => control.deleteVhdBlob({ plan, diskIndex: disk.diskIndex }));
    // The first failed upload stops the others, and all settle before compensation deletes their blobs.
    const together = patched('uploads-settle-before-compensation')
      ? allOrNone
      : (tasks: (() => Promise<void>)[]) => Promise.all(tasks.map((t) => t())).then(() => undefined);
    await together(
      plan.disks.map((disk) => async () => {
        const row = progress.disks[disk.diskIndex];
        row.state = 'writing';
        const upload = longRunning(`upload disk ${disk.diskIndex} (${disk.label}) as fixed VHD`, uploadsOn);
        const r = await withLimits(uploadLimits, `${holder}/disk${disk.diskIndex}`, () =>
          upload.uploadVhd({ plan, diskIndex: disk.diskIndex }),
        );
        uploads[disk.diskIndex] = r;
        row.state = 'done';
        row.bytesDone = row.bytesTotal;
        setPhase('uploading', uploadsOn ? `on Azure proxy ${plan.proxy!.vmName}` : undefined);
      }),
    );

    let guestChanges: GuestChange[] = [];
    let guestWarnings: string[] = [];
    const deleteDisks = () => control.deleteManagedDisks({ plan });
    if (plan.osType === 'Windows') {
      setPhase('preparing-guest', 'OS disk mounted on the backup server');
      ({ changes: guestChanges, warnings: guestWarnings } = await longRunning(
        'mount, prepare and unmount the Windows OS disk',
      ).prepareGuestOnBackupServer({ plan }));
      await releaseProxy();
      saga.add('delete the managed disks', deleteDisks);
      await control.createManagedDisks({ plan });
    } else {
      saga.add('delete the managed disks', deleteDisks);
      await control.createManagedDisks({ plan });
      const helper = plan.helper!;
      setPhase('preparing-guest', `helper appliance ${helper.vmName}`);
      let helperHeld = true;
      const releaseHelper = async () => {
        if (helperHeld) {
          await control.releaseLeaseActivity({ target: helper, holder });
          helperHeld = false;
        }
      };
      const detach = () => control.detachFromHelper({ plan });
      saga.add(`release helper ${helper.vmName}`, releaseHelper);
      // Reserve the helper's disk slots (waiting while other restores hold them), attach, then start it.
      await lease.acquireLeaseActivity({ target: helper, holder, request: { slots: plan.disks.length, powerOn: false } });
      const attached = saga.add(`detach the disks from helper ${helper.vmName}`, detach);
      await control.attachToHelper({ plan });
      await lease.acquireLeaseActivity({ target: helper, holder, request: { slots: plan.disks.length } });
      // Runs on the worker inside the helper appliance; one that never picks it up fails the restore.
      ({ changes: guestChanges, warnings: guestWarnings } = await longRunning(`prepare the Linux disks on helper ${helper.vmName}`, {
        taskQueue: plan.helperTaskQueue,
        scheduleToStartTimeout: '15 minutes',
      }).prepareGuestOnHelper({ plan }));
      await detach();
      saga.remove(attached);
      await releaseHelper();
      await releaseProxy();
    }

    // Verified once prepared and detached, before the VM exists: Azure grants read access only to a disk no
    // running VM holds, and a VM that fails never runs in production, not even once.
    let verification: RestoreVerification = { status: 'skipped' };
    if (request.verify) {
      setPhase('verifying-boot', `managed disks of ${plan.vmName} booted as Gen${plan.generation} in the verification lab`);
      verification = await verifyRestoredBoot(
        { target: 'azure', plan, timeoutSeconds: request.verifyTimeoutSeconds },
        request.keepOnVerifyFailure ?? false,
        `the managed disks of '${plan.vmName}'`,
      );
    } else {
      markVerification('skipped');
    }

    setPhase('registering-vm', `${plan.vmName} (${plan.vmSize}, Gen${plan.generation})`);
    saga.add(`delete NIC of '${plan.vmName}'`, () => control.deleteNic({ plan }));
    await control.createNic({ plan });
    saga.add(`delete VM '${plan.vmName}'`, () => control.deleteAzureVm({ plan }));
    const vm = await control.createAzureVm({ plan });

    let agentInstalled: boolean | undefined;
    if (plan.osType === 'Windows') {
      // Without a configured installer nothing was staged (guest preparation warned): no agent to wait for.
      if (plan.agentInstaller) {
        setPhase('installing-agent');
        agentInstalled = await control.confirmAgentInstalled({ plan });
      } else {
        agentInstalled = false;
      }
    }
    if (releaseRegion && regionHeld) {
      saga.remove(regionHeld);
      await releaseRegion();
    }
    setPhase('completed');
    return {
      restoreId,
      vmName: plan.vmName,
      vmId: vm.vmId,
      generation: plan.generation,
      osType: plan.osType,
      disks: uploads,
      guestChanges,
      guestWarnings,
      agentInstalled,
      verification,
    };
  } catch (err) {
    const cancelled = isCancellation(err);
    await CancellationScope.nonCancellable(async () => {
      if (!plan.keepOnFailure) {
        setPhase('compensating', cancelled ? 'restore cancelled' : 'restore failed');
        await saga.compensate();
      } else {
        // Even when keeping what was made, shared appliances and limits must not stay held.
        await releaseProxy().catch((err: unknown) => logUndoFailure('release the proxy', err));
        await releaseRegion?.().catch((err: unknown) => logUndoFailure('release the region slot', err));
      }
    });
    setPhase(cancelled ? 'cancelled' : 'failed', err instanceof Error ? err.message : String(err));
    throw err;
  }
}
