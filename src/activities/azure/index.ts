import { mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import { DiskProgressReporter } from '../progress-report';
import { WithStartWorkflowOperation, type Client } from '@temporalio/client';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { helperTaskQueue, type AppConfig, type AzureConfig } from '../../config';
import type {
  AzureDiskResult,
  AzurePlan,
  AzureRestoreRequest,
  LeaseRequest,
  LeaseState,
  LeaseTarget,
  UploadCheckpoint,
} from '../../domain/azure';
import { FailureType, RestoreError } from '../../domain/errors';
import { diskLayout, getRestorePoint, readDiskBlocks } from '../../repository';
import { deleteOwnedVhdBlob, uploadFixedVhd, vhdBlobOwnership, verifyUploadedVhd } from '../../azure/pageblob';
import { assertAzureDiskSize } from '../../azure/vhd';
import { editVhdBlob } from '../../azure/blob-image';
import { blobUrlForRecord } from '../../azure/blob-url';
import { checkAgentInstaller } from '../../azure/agent-installer';
import { attachedDiskDevice } from '../../azure/attached-disks';
import { prepareGuestDiskIsolated, type IsolatedPrepResult } from '../../guest/isolation';
import type { GuestPreparationResult } from '../../guest/types';
import type { ArmClients } from '../../azure/arm-clients';
import { armClientsFor } from '../../azure/credential';
import { acquireLease, leaseWorkflowId, releaseLease, resourceLease } from '../../workflows/lease';
import { validateAzureRestoreRequest, validateAzureVmName } from '../../domain/validation';
import { withFailureMapping } from '../failures';
import { deltaCounter, uploadedBytes } from '../../telemetry/metrics';

export interface AzureDeps {
  config: AppConfig;
  client: Client;
}

const RESTORE_TAG = 'vmrestoreRestoreId';

function invalid(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, message);
}

function isNotFound(err: unknown): boolean {
  const e = err as { statusCode?: number; code?: string };
  return e?.statusCode === 404 || e?.code === 'ResourceNotFound' || e?.code === 'NotFound' || e?.code === 'BlobNotFound';
}

/** ARM errors keep their code; 4xx other than throttling are the caller's to fix, so they are not retried. */
function armFailure(what: string, err: unknown): never {
  const e = err as { statusCode?: number; code?: string; message?: string };
  const status = e?.statusCode ?? 0;
  const retryable = status === 0 || status === 408 || status === 429 || status >= 500;
  throw new RestoreError(FailureType.AzureFault, `${what} failed: ${e?.code ? `${e.code}: ` : ''}${e?.message ?? String(err)}`, !retryable);
}

/** Azure tag values hold at most 256 characters; the restore id is one. */
const MAX_TAG_VALUE = 256;

function isPreconditionFailed(err: unknown): boolean {
  const e = err as { statusCode?: number; code?: string };
  return e?.statusCode === 412 || e?.code === 'PreconditionFailed';
}

/** Resources a restore creates carry its id in this tag; only such resources are ever updated or deleted. */
function alreadyExists(kind: string, name: string, resourceGroup: string, owner: string | undefined): RestoreError {
  return new RestoreError(
    FailureType.AlreadyExists,
    `${kind} '${name}' already exists in resource group '${resourceGroup}' and was not created by this restore ` +
      `(${owner ? `tag ${RESTORE_TAG}=${owner}` : `no ${RESTORE_TAG} tag`}); it is left untouched: choose another --vm-name or remove it`,
  );
}

export function parseSubnetId(id: string, subscriptionId: string): { resourceGroup: string; vnet: string; subnet: string } {
  const m =
    /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Network\/virtualNetworks\/([^/]+)\/subnets\/([^/]+)$/i.exec(
      typeof id === 'string' ? id : '',
    );
  if (!m)
    invalid(
      `subnet ${JSON.stringify(id)} is not a subnet resource id (/subscriptions/…/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET)`,
    );
  if (m[1].toLowerCase() !== subscriptionId.toLowerCase()) {
    invalid(`subnet '${id}' is in subscription ${m[1]}, not in the target subscription ${subscriptionId}`);
  }
  return { resourceGroup: m[2], vnet: m[3], subnet: m[4] };
}

export function createAzureActivities(deps: AzureDeps) {
  const { config } = deps;
  const azure = (): AzureConfig => {
    if (!config.azure)
      throw new RestoreError(FailureType.Configuration, 'no Azure target is configured (config key "azure", or start the lab)');
    return config.azure;
  };
  let arm: ArmClients | undefined;
  const clients = (): ArmClients => {
    if (!arm) {
      arm = armClientsFor(azure(), { maxRetries: 6, retryDelayInMs: 200, maxRetryDelayInMs: 5000 });
    }
    return arm;
  };
  let container: ContainerClient | undefined;
  const blobs = (): ContainerClient => {
    if (!container) {
      const a = azure();
      const cs = a.blobConnectionString ?? (a.blobConnectionStringEnv ? process.env[a.blobConnectionStringEnv] : undefined);
      if (!cs) throw new RestoreError(FailureType.Configuration, 'azure.blobConnectionStringEnv is not set or names an empty variable');
      container = BlobServiceClient.fromConnectionString(cs).getContainerClient(a.container);
    }
    return container;
  };
  /** The task queue of a running lease workflow with this id when it is not ours, else undefined. */
  const foreignLeaseQueue = async (workflowId: string): Promise<string | undefined> => {
    try {
      const d = await deps.client.workflow.getHandle(workflowId).describe();
      return d.status.name === 'RUNNING' && d.taskQueue !== config.temporal.taskQueue ? d.taskQueue : undefined;
    } catch (err) {
      if ((err as { name?: string }).name === 'WorkflowNotFoundError') return undefined;
      throw err;
    }
  };
  const powerState = async (resourceGroup: string, vmName: string): Promise<string> => {
    const view = await clients().compute.virtualMachines.instanceView(resourceGroup, vmName);
    const s = view.statuses?.find((x) => x.code?.startsWith('PowerState/'));
    return s?.code?.slice('PowerState/'.length) ?? 'unknown';
  };

  /** The restore id a resource is tagged with; undefined (absent) when there is no such resource. */
  const ownerOf = async (get: () => Promise<{ tags?: Record<string, string> }>, what: string): Promise<{ owner?: string } | undefined> => {
    try {
      const r = await get();
      return { owner: r.tags?.[RESTORE_TAG] };
    } catch (err) {
      if (isNotFound(err)) return undefined;
      armFailure(`reading ${what}`, err);
    }
  };
  /**
   * Creates a resource only if it is absent (If-None-Match: *) or updates it only if this restore made it:
   * a resource of the same name made by anyone else is an AlreadyExists error and is not touched.
   */
  const createOwned = async <T>(
    kind: string,
    name: string,
    plan: AzurePlan,
    get: () => Promise<{ tags?: Record<string, string> }>,
    put: (onlyIfAbsent: boolean) => Promise<T>,
  ): Promise<T> => {
    const what = `${kind} '${name}'`;
    const found = await ownerOf(get, what);
    if (found && found.owner !== plan.restoreId) throw alreadyExists(kind, name, plan.resourceGroup, found.owner);
    try {
      return await put(!found);
    } catch (err) {
      if (!isPreconditionFailed(err)) armFailure(`creating ${what}`, err);
      // Someone created it between our read and our write: ours only if a parallel attempt of this restore did.
      const now = await ownerOf(get, what);
      if (now?.owner !== plan.restoreId) throw alreadyExists(kind, name, plan.resourceGroup, now?.owner);
      try {
        return await put(false);
      } catch (again) {
        armFailure(`creating ${what}`, again);
      }
    }
  };
  /** Deletes a resource only when it carries this restore's tag (read, check, delete). */
  const deleteOwned = async (
    kind: string,
    name: string,
    plan: AzurePlan,
    get: () => Promise<{ tags?: Record<string, string> }>,
    del: () => Promise<unknown>,
  ) => {
    const found = await ownerOf(get, `${kind} '${name}'`);
    if (!found || found.owner !== plan.restoreId) return;
    try {
      await del();
    } catch (err) {
      if (!isNotFound(err)) armFailure(`deleting ${kind} '${name}'`, err);
    }
  };

  return {
    async prepareAzureRestore(req: AzureRestoreRequest & { restoreId: string }): Promise<AzurePlan> {
      validateAzureRestoreRequest(req);
      const a = azure();
      if (typeof req.restoreId !== 'string' || req.restoreId.length === 0 || req.restoreId.length > MAX_TAG_VALUE) {
        invalid(
          `restore id must be 1-${MAX_TAG_VALUE} characters (it is stored as an Azure tag value), got ${String(req.restoreId).length}`,
        );
      }
      const rp = await getRestorePoint(config.repository.path, req.restorePointId);
      const osType = rp.vm.guestOs === 'windows' ? 'Windows' : 'Linux';
      validateAzureVmName(req.vmName, osType);
      if (req.skipGuestPreparation && !a.allowTestSwitches)
        invalid('skipGuestPreparation is a test switch; this target does not allow it (only the lab configuration does)');
      const generation = req.generation ?? 1;
      if (generation !== 1 && generation !== 2) invalid(`generation must be 1 or 2, got ${String(generation)}`);
      // A Generation 1 VM boots with BIOS only: a UEFI guest's OS disk is converted after preparation.
      const bootConversion = rp.vm.firmware === 'efi' && generation === 1 ? ('uefi-to-bios' as const) : undefined;
      if (rp.vm.firmware === 'bios' && generation === 2) {
        invalid(`VM '${rp.vm.name}' boots with BIOS; a Generation 2 VM boots with UEFI only: restore with --generation 1`);
      }
      const location = req.location ?? a.location;
      if (!a.locations.includes(location))
        invalid(`location '${location}' is not available for this target (known: ${a.locations.join(', ')})`);
      const resourceGroup = req.resourceGroup ?? a.resourceGroup;
      const { compute, network } = clients();
      try {
        await compute.virtualMachines.list(resourceGroup).next();
      } catch (err) {
        if (isNotFound(err)) invalid(`resource group '${resourceGroup}' not found in subscription ${a.subscriptionId}`);
        armFailure(`listing VMs in resource group '${resourceGroup}'`, err);
      }
      const subnetId = req.subnetId ?? a.subnetId;
      const sn = parseSubnetId(subnetId, a.subscriptionId);
      try {
        await network.subnets.get(sn.resourceGroup, sn.vnet, sn.subnet);
      } catch (err) {
        if (isNotFound(err))
          invalid(`subnet '${sn.subnet}' of virtual network '${sn.vnet}' (resource group '${sn.resourceGroup}') not found`);
        armFailure(`reading subnet ${subnetId}`, err);
      }
      const vmSize = req.vmSize ?? a.defaultVmSize;
      const maxDataDisks = new Map<string, number>();
      for await (const s of compute.virtualMachineSizes.list(location)) if (s.name) maxDataDisks.set(s.name, s.maxDataDiskCount ?? 0);
      const sizes = [...maxDataDisks.keys()];
      if (!sizes.includes(vmSize)) invalid(`VM size '${vmSize}' is not offered in '${location}' (e.g. ${sizes.slice(0, 8).join(', ')})`);
      const dataDiskCount = rp.vm.disks.length - 1;
      if (dataDiskCount > maxDataDisks.get(vmSize)!) {
        throw new RestoreError(
          FailureType.AzureLimit,
          `VM '${rp.vm.name}' has ${dataDiskCount} data disks; size '${vmSize}' allows ${maxDataDisks.get(vmSize)}: choose a larger --vm-size`,
        );
      }
      const hyperVGeneration = generation === 2 ? 'V2' : 'V1';
      const safeId = req.restoreId.replace(/[^A-Za-z0-9-]/g, '-').toLowerCase();
      const disks = rp.vm.disks.map((d) => {
        const os = d.index === 0;
        // The data goes into a page blob first (8 TiB at most) and is imported from there, so that limit
        // applies, not the 32 TiB of a managed disk: refuse here, before the proxy is powered on.
        assertAzureDiskSize(d.capacityBytes, {
          os,
          hyperVGeneration,
          target: 'pageBlob',
          diskName: `${rp.vm.name} disk ${d.index} (${d.label})`,
        });
        const blobName = `${safeId}/disk${d.index}.vhd`;
        const managedDiskName = os ? `${req.vmName}-osdisk` : `${req.vmName}-datadisk${d.index}`;
        return {
          diskIndex: d.index,
          label: d.label,
          capacityBytes: d.capacityBytes,
          nonZeroBytes: diskLayout(rp, d.index).nonZeroBytes,
          os,
          blobName,
          // Without the SAS: the plan is stored in history, and managed-disk import takes the plain URL.
          blobUrl: blobUrlForRecord(blobs().getBlobClient(blobName).url),
          managedDiskName,
          managedDiskId: `/subscriptions/${a.subscriptionId}/resourceGroups/${resourceGroup}/providers/Microsoft.Compute/disks/${managedDiskName}`,
        };
      });
      // Every name this restore will create is checked now, before anything exists: a resource of that name
      // made by anyone else (untagged, or tagged with another restore's id) stops the restore untouched.
      const nicName = `${req.vmName}-nic`;
      const named: Array<{ kind: string; name: string; get: () => Promise<{ tags?: Record<string, string> }> }> = [
        { kind: 'VM', name: req.vmName, get: () => compute.virtualMachines.get(resourceGroup, req.vmName) },
        { kind: 'network interface', name: nicName, get: () => network.networkInterfaces.get(resourceGroup, nicName) },
        ...disks.map((d) => ({
          kind: 'managed disk',
          name: d.managedDiskName,
          get: () => compute.disks.get(resourceGroup, d.managedDiskName),
        })),
      ];
      for (const r of named) {
        const found = await ownerOf(r.get, `${r.kind} '${r.name}'`);
        if (found && found.owner !== req.restoreId) throw alreadyExists(r.kind, r.name, resourceGroup, found.owner);
      }
      for (const d of disks) {
        const blob = await vhdBlobOwnership(blobs().getPageBlobClient(d.blobName), req.restoreId, d.diskIndex);
        if (blob.state === 'foreign') {
          throw new RestoreError(
            FailureType.AlreadyExists,
            `blob '${d.blobName}' in container '${a.container}' already exists and was not created by this restore ` +
              `(${blob.owner ? `disk uuid ${blob.owner}` : 'no vmrestore metadata'}); it is left untouched`,
          );
        }
      }
      let proxy: LeaseTarget | undefined;
      if (req.proxy) {
        const p = a.proxies.find((x) => x.name === req.proxy);
        if (!p) invalid(`Azure proxy '${req.proxy}' is not configured (known: ${a.proxies.map((x) => x.name).join(', ') || 'none'})`);
        proxy = {
          kind: 'proxy',
          name: p.name,
          resourceGroup: p.resourceGroup,
          vmName: p.vmName,
          idleTimeoutMs: p.idleTimeoutSeconds * 1000,
        };
      }
      let helper: LeaseTarget | undefined;
      let helperQueue: string | undefined;
      if (osType === 'Linux') {
        const h = a.helpers[location];
        if (!h) invalid(`no helper appliance is configured for location '${location}' (Linux restores prepare disks on it)`);
        let helperSize: string | undefined;
        try {
          helperSize = (await compute.virtualMachines.get(h.resourceGroup, h.vmName)).hardwareProfile?.vmSize;
        } catch (err) {
          if (isNotFound(err)) invalid(`helper appliance VM '${h.vmName}' (resource group '${h.resourceGroup}') not found`);
          armFailure(`reading helper appliance VM '${h.vmName}'`, err);
        }
        // Every disk of the restore is attached to the helper at once, so they must fit its data-disk slots.
        const slots = helperSize === undefined ? undefined : maxDataDisks.get(helperSize);
        if (slots !== undefined && rp.vm.disks.length > slots) {
          throw new RestoreError(
            FailureType.AzureLimit,
            `VM '${rp.vm.name}' has ${rp.vm.disks.length} disks; helper appliance '${h.vmName}' (${helperSize}) takes at most ${slots} data disks`,
          );
        }
        helper = {
          kind: 'helper',
          name: `${location}-${h.vmName}`,
          resourceGroup: h.resourceGroup,
          vmName: h.vmName,
          idleTimeoutMs: h.idleTimeoutSeconds * 1000,
          slots,
        };
        helperQueue = helperTaskQueue(config, location, h);
      }
      return {
        restoreId: req.restoreId,
        restorePointId: rp.id,
        vm: rp.vm,
        vmName: req.vmName,
        subscriptionId: a.subscriptionId,
        resourceGroup,
        location,
        vmSize,
        subnetId,
        generation,
        bootConversion,
        osType,
        container: a.container,
        storageAccountId: a.storageAccountId,
        nicName,
        proxy,
        helper,
        helperTaskQueue: helperQueue,
        disks,
        keepOnFailure: req.keepOnFailure ?? false,
        agentInstaller: osType === 'Windows' && a.windowsAgentInstaller ? await checkAgentInstaller(a.windowsAgentInstaller) : undefined,
        ...(req.skipGuestPreparation ? { skipGuestPreparation: true } : {}),
      };
    },

    /** Entity-workflow lease: returns once the shared VM runs (powering it on if needed). */
    async acquireLeaseActivity(args: { target: LeaseTarget; holder: string; request?: LeaseRequest }): Promise<void> {
      // The lease checks on this timer that the restore holding it still runs, and drops it otherwise.
      const target = { ...args.target, holderCheckMs: args.target.holderCheckMs ?? (config.azure?.leaseHolderCheckSeconds ?? 60) * 1000 };
      const initial: LeaseState = { target, holders: [], poweredOn: false, powerOns: 0, powerOffs: 0 };
      const execution = Context.current().info.workflowExecution;
      const owner = args.request?.owner ?? (execution ? { workflowId: execution.workflowId, runId: execution.runId } : undefined);
      const request: LeaseRequest = { ...args.request, owner };
      const workflowId = leaseWorkflowId(args.target, config.temporal.taskQueue);
      // An acquire on a lease that no worker of ours serves would wait forever; say so instead.
      const foreign = await foreignLeaseQueue(workflowId);
      if (foreign !== undefined) {
        throw new RestoreError(
          FailureType.InvalidRequest,
          `lease workflow '${workflowId}' runs on task queue '${foreign}', not on '${config.temporal.taskQueue}' ` +
            `that this worker serves; end it (temporal workflow terminate --workflow-id '${workflowId}') and retry`,
        );
      }
      await deps.client.workflow.executeUpdateWithStart(acquireLease, {
        args: [args.holder, request],
        startWorkflowOperation: new WithStartWorkflowOperation(resourceLease, {
          workflowId,
          taskQueue: config.temporal.taskQueue,
          args: [initial],
          workflowIdConflictPolicy: 'USE_EXISTING',
          staticSummary:
            args.target.kind === 'limit' ? `Limit on ${args.target.vmName}` : `Lease on Azure ${args.target.kind} VM ${args.target.vmName}`,
        }),
      });
    },

    async releaseLeaseActivity(args: { target: LeaseTarget; holder: string }): Promise<void> {
      const workflowId = leaseWorkflowId(args.target, config.temporal.taskQueue);
      // A lease on another queue was never acquired through this worker, and an update to it would hang.
      if ((await foreignLeaseQueue(workflowId)) !== undefined) return;
      try {
        await deps.client.workflow.getHandle(workflowId).executeUpdate(releaseLease, { args: [args.holder] });
      } catch (err) {
        // A lease workflow that no longer runs holds nothing to release.
        if ((err as { name?: string }).name !== 'WorkflowNotFoundError') throw err;
      }
    },

    async powerOnAzureVm(args: { resourceGroup: string; vmName: string }): Promise<void> {
      try {
        if ((await powerState(args.resourceGroup, args.vmName)) === 'running') return;
        await clients().compute.virtualMachines.start(args.resourceGroup, args.vmName);
      } catch (err) {
        armFailure(`starting VM '${args.vmName}'`, err);
      }
    },

    async deallocateAzureVm(args: { resourceGroup: string; vmName: string }): Promise<void> {
      try {
        if ((await powerState(args.resourceGroup, args.vmName)) === 'deallocated') return;
        await clients().compute.virtualMachines.deallocate(args.resourceGroup, args.vmName);
      } catch (err) {
        armFailure(`deallocating VM '${args.vmName}'`, err);
      }
    },

    /** Streams one disk into a fixed-VHD page blob; resumes from the last heartbeat. */
    async uploadVhd(args: { plan: AzurePlan; diskIndex: number }): Promise<AzureDiskResult> {
      const { plan, diskIndex } = args;
      const ctx = Context.current();
      const started = Date.now();
      const disk = plan.disks.find((d) => d.diskIndex === diskIndex);
      if (!disk) invalid(`disk ${diskIndex} is not in the plan`);
      const rp = await getRestorePoint(config.repository.path, plan.restorePointId);
      await blobs().createIfNotExists();
      const prev = ctx.info.heartbeatDetails as UploadCheckpoint | undefined;
      const resumeFrom = prev?.diskIndex === diskIndex ? prev.offset : 0;
      // A later attempt keeps the blob; the uploader may move further, to the checkpoint stored in the blob.
      const resuming = ctx.info.attempt > 1 || resumeFrom > 0;
      const blobClient = blobs().getPageBlobClient(disk.blobName);
      let last: UploadCheckpoint = { diskIndex, offset: resumeFrom, bytesSent: 0 };
      const countUploaded = deltaCounter((n) => uploadedBytes.inc({ target: 'azure', transport: 'page-blob' }, n));
      const reporter = new DiskProgressReporter({ diskIndex, bytesTotal: disk.capacityBytes });
      const beat = setInterval(() => {
        last.bytesPerSecond = Math.round(reporter.update(last.offset));
        ctx.heartbeat(last);
      }, 1000);
      try {
        const res = await uploadFixedVhd({
          blobClient,
          capacityBytes: disk.capacityBytes,
          blocks: (from) =>
            readDiskBlocks(config.repository.path, rp, diskIndex, {
              fromOffset: Math.min(from, disk.capacityBytes),
              concurrency: config.restore.readConcurrency,
              signal: ctx.cancellationSignal,
            }),
          restoreId: plan.restoreId,
          diskIndex,
          resumeFromOffset: resuming ? resumeFrom : undefined,
          footerTimestamp: new Date(Date.parse(rp.createdAt)),
          signal: ctx.cancellationSignal,
          onProgress: (p) => {
            countUploaded(p.bytesSent);
            last = {
              diskIndex,
              offset: p.contiguousOffset,
              bytesSent: p.bytesSent,
              bytesPerSecond: Math.round(reporter.update(p.contiguousOffset)),
            };
            ctx.heartbeat(last);
          },
        });
        countUploaded(res.bytesSent);
        const check = await verifyUploadedVhd(blobClient, { capacityBytes: disk.capacityBytes, signal: ctx.cancellationSignal });
        if (!check.ok)
          throw new RestoreError(
            FailureType.AzureFault,
            `uploaded VHD ${disk.blobUrl} failed verification: ${check.problems.join('; ')}`,
            false,
          );
        return {
          diskIndex,
          blobUrl: disk.blobUrl,
          managedDiskId: disk.managedDiskId,
          bytesUploaded: res.bytesSent,
          zeroBytesSkipped: res.zeroBytesSkipped,
          resumedFromOffset: res.resumedFrom,
          seconds: (Date.now() - started) / 1000,
        };
      } finally {
        clearInterval(beat);
      }
    },

    /**
     * Edits the OS disk's guest for Azure, then, for a UEFI guest on a Generation 1 VM, converts it to boot
     * with BIOS. The editors run in an unprivileged child process without the worker's environment or
     * credentials (guest/isolation.ts); only its changes and warnings come back.
     * - `helper-appliance` (Linux): runs on the helper's worker and edits the managed disks attached to
     *   it, found by LUN under the helper's device root, as on Azure, where the import copied the blob and
     *   later blob writes never reach the disk. The data disks are handed over too, read for their
     *   filesystem UUIDs.
     * - `backup-server` (Windows): edits the uploaded VHD blob (materialised locally, changed pages
     *   written back) before the managed disks are imported from it.
     */
    async prepareGuestDisk(args: { plan: AzurePlan; where: 'backup-server' | 'helper-appliance' }): Promise<GuestPreparationResult> {
      const { plan } = args;
      const ctx = Context.current();
      const signal = ctx.cancellationSignal;
      const osDisk = plan.disks.find((d) => d.os)!;
      if (plan.skipGuestPreparation) {
        return { changes: [], warnings: ['guest preparation and boot conversion skipped (test switch skipGuestPreparation)'] };
      }
      const beat = setInterval(() => ctx.heartbeat({ phase: 'preparing' }), 1000);
      const merged = (out: IsolatedPrepResult): GuestPreparationResult => ({
        changes: [...out.changes, ...(out.bootConversion?.changes ?? [])],
        warnings: [...out.warnings, ...(out.bootConversion?.warnings ?? [])],
      });
      try {
        if (args.where === 'helper-appliance') {
          const h = azure().helpers[plan.location];
          if (!h) throw new RestoreError(FailureType.Configuration, `no helper appliance is configured for location '${plan.location}'`);
          const at = { resourceGroup: h.resourceGroup, vmName: h.vmName, deviceRoot: h.deviceRoot };
          const device = async (d: (typeof plan.disks)[number]) =>
            (await attachedDiskDevice(clients(), at, d.managedDiskId, { signal })).device;
          const dataDiskPaths: string[] = [];
          for (const d of plan.disks.filter((x) => !x.os).sort((a, b) => a.diskIndex - b.diskIndex)) dataDiskPaths.push(await device(d));
          const out = await prepareGuestDiskIsolated(
            { osType: plan.osType, imagePath: await device(osDisk), dataDiskPaths, bootConversion: plan.bootConversion },
            { signal, devices: true },
          );
          return merged(out);
        }
        const workDir = path.join(os.tmpdir(), 'vmrestore-guest', plan.restoreId.replace(/[^A-Za-z0-9-]/g, '_'));
        mkdirSync(workDir, { recursive: true });
        const out = await editVhdBlob(blobs().getPageBlobClient(osDisk.blobName), {
          capacityBytes: osDisk.capacityBytes,
          workDir,
          signal,
          edit: (image: string) =>
            prepareGuestDiskIsolated(
              {
                osType: plan.osType,
                imagePath: image,
                bootConversion: plan.bootConversion,
                agentInstallerPath: plan.agentInstaller?.path,
                agentInstallerSha256: plan.agentInstaller?.sha256,
              },
              { signal },
            ),
        });
        return merged(out.result);
      } finally {
        clearInterval(beat);
      }
    },

    async createManagedDisks(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { compute } = clients();
      for (const d of plan.disks) {
        await createOwned(
          'managed disk',
          d.managedDiskName,
          plan,
          () => compute.disks.get(plan.resourceGroup, d.managedDiskName),
          (onlyIfAbsent) =>
            compute.disks.createOrUpdate(
              plan.resourceGroup,
              d.managedDiskName,
              {
                location: plan.location,
                tags: { [RESTORE_TAG]: plan.restoreId },
                sku: { name: 'Standard_LRS' },
                ...(d.os ? { osType: plan.osType, hyperVGeneration: plan.generation === 2 ? 'V2' : 'V1' } : {}),
                creationData: { createOption: 'Import', sourceUri: blobUrlForRecord(d.blobUrl), storageAccountId: plan.storageAccountId },
              },
              onlyIfAbsent ? { requestOptions: { headers: { 'If-None-Match': '*' } } } : {},
            ),
        );
      }
    },

    async attachToHelper(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const helper = plan.helper!;
      const { compute } = clients();
      const vm = await compute.virtualMachines.get(helper.resourceGroup, helper.vmName);
      const attached = new Set((vm.storageProfile?.dataDisks ?? []).map((d) => d.managedDisk?.id?.toLowerCase()));
      const toAttach = plan.disks.filter((d) => !attached.has(d.managedDiskId.toLowerCase()));
      if (toAttach.length === 0) return;
      try {
        await compute.virtualMachines.attachDetachDataDisks(helper.resourceGroup, helper.vmName, {
          dataDisksToAttach: toAttach.map((d) => ({ diskId: d.managedDiskId })),
        });
      } catch (err) {
        armFailure(`attaching disks to helper appliance '${helper.vmName}'`, err);
      }
    },

    async detachFromHelper(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const helper = plan.helper;
      if (!helper) return;
      const { compute } = clients();
      const vm = await compute.virtualMachines.get(helper.resourceGroup, helper.vmName);
      const attached = new Set((vm.storageProfile?.dataDisks ?? []).map((d) => d.managedDisk?.id?.toLowerCase()));
      const toDetach = plan.disks.filter((d) => attached.has(d.managedDiskId.toLowerCase()));
      if (toDetach.length === 0) return;
      try {
        await compute.virtualMachines.attachDetachDataDisks(helper.resourceGroup, helper.vmName, {
          dataDisksToDetach: toDetach.map((d) => ({ diskId: d.managedDiskId })),
        });
      } catch (err) {
        armFailure(`detaching disks from helper appliance '${helper.vmName}'`, err);
      }
    },

    async createNic(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { network } = clients();
      await createOwned(
        'network interface',
        plan.nicName,
        plan,
        () => network.networkInterfaces.get(plan.resourceGroup, plan.nicName),
        async (onlyIfAbsent) =>
          network.networkInterfaces.createOrUpdate(
            plan.resourceGroup,
            plan.nicName,
            {
              location: plan.location,
              tags: { [RESTORE_TAG]: plan.restoreId },
              ipConfigurations: [{ name: 'ipconfig1', subnet: { id: plan.subnetId } }],
            },
            onlyIfAbsent ? { requestOptions: { headers: { 'If-None-Match': '*' } } } : {},
          ),
      );
    },

    /** Registers the VM on the prepared disks and makes sure it runs. */
    async createAzureVm(args: { plan: AzurePlan }): Promise<{ vmId: string }> {
      const { plan } = args;
      const a = azure();
      const { compute } = clients();
      const nicId = `/subscriptions/${a.subscriptionId}/resourceGroups/${plan.resourceGroup}/providers/Microsoft.Network/networkInterfaces/${plan.nicName}`;
      const osDisk = plan.disks.find((d) => d.os)!;
      const vm = await createOwned(
        'VM',
        plan.vmName,
        plan,
        () => compute.virtualMachines.get(plan.resourceGroup, plan.vmName),
        (onlyIfAbsent) =>
          compute.virtualMachines.createOrUpdate(
            plan.resourceGroup,
            plan.vmName,
            {
              location: plan.location,
              tags: { [RESTORE_TAG]: plan.restoreId },
              hardwareProfile: { vmSize: plan.vmSize },
              storageProfile: {
                osDisk: { osType: plan.osType, createOption: 'Attach', managedDisk: { id: osDisk.managedDiskId } },
                dataDisks: plan.disks
                  .filter((d) => !d.os)
                  .map((d, i) => ({ lun: i, createOption: 'Attach', managedDisk: { id: d.managedDiskId } })),
              },
              networkProfile: { networkInterfaces: [{ id: nicId, primary: true }] },
            },
            onlyIfAbsent ? { ifNoneMatch: '*' } : {},
          ),
      );
      try {
        if ((await powerState(plan.resourceGroup, plan.vmName)) !== 'running')
          await compute.virtualMachines.start(plan.resourceGroup, plan.vmName);
      } catch (err) {
        armFailure(`starting VM '${plan.vmName}'`, err);
      }
      return { vmId: vm.vmId ?? vm.id ?? plan.vmName };
    },

    /** The staged agent installs from RunOnce at first boot; wait until Azure reports it ready. */
    async confirmAgentInstalled(args: { plan: AzurePlan }): Promise<boolean> {
      const { plan } = args;
      const deadline = Date.now() + 120_000;
      while (Date.now() < deadline) {
        const view = await clients().compute.virtualMachines.instanceView(plan.resourceGroup, plan.vmName);
        if (view.vmAgent?.statuses?.some((s) => s.displayStatus === 'Ready')) return true;
        Context.current().heartbeat();
        await new Promise((r) => setTimeout(r, 2000));
      }
      throw new RestoreError(FailureType.AzureFault, `the Azure VM agent on '${plan.vmName}' did not report Ready within 2 minutes`, false);
    },

    async deleteAzureVm(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { compute } = clients();
      await deleteOwned(
        'VM',
        plan.vmName,
        plan,
        () => compute.virtualMachines.get(plan.resourceGroup, plan.vmName),
        () => compute.virtualMachines.delete(plan.resourceGroup, plan.vmName),
      );
    },

    async deleteNic(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { network } = clients();
      await deleteOwned(
        'network interface',
        plan.nicName,
        plan,
        () => network.networkInterfaces.get(plan.resourceGroup, plan.nicName),
        async () => network.networkInterfaces.delete(plan.resourceGroup, plan.nicName),
      );
    },

    async deleteManagedDisks(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { compute } = clients();
      for (const d of plan.disks) {
        await deleteOwned(
          'managed disk',
          d.managedDiskName,
          plan,
          () => compute.disks.get(plan.resourceGroup, d.managedDiskName),
          () => compute.disks.delete(plan.resourceGroup, d.managedDiskName),
        );
      }
    },

    /** Deletes the disk's VHD blob only if this restore's upload made it (its disk uuid is in the metadata). */
    async deleteVhdBlob(args: { plan: AzurePlan; diskIndex: number }): Promise<void> {
      const d = args.plan.disks.find((x) => x.diskIndex === args.diskIndex);
      if (d) await deleteOwnedVhdBlob(blobs().getPageBlobClient(d.blobName), args.plan.restoreId, d.diskIndex);
    },
  };
}

export type AzureActivities = ReturnType<typeof createAzureActivities>;

export function createMappedAzureActivities(deps: AzureDeps): AzureActivities {
  return withFailureMapping(createAzureActivities(deps));
}
