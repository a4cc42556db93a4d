/** Guest preparation: on the backup server (Windows, the VHD blob) or on the helper appliance (Linux, its attached disks). */
import { mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import type { AzurePlan } from '../../domain/azure';
import { FailureType, RestoreError } from '../../domain/errors';
import { editVhdBlob } from '../../azure/blob-image';
import { attachedDiskDevice } from '../../azure/attached-disks';
import { type IsolatedPrepResult, prepareGuestDiskIsolated } from '../../guest/isolation';
import type { GuestPreparationResult } from '../../guest/types';
import type { AzureContext } from './context';

function merged(out: IsolatedPrepResult): GuestPreparationResult {
  return {
    changes: [...out.changes, ...(out.bootConversion?.changes ?? [])],
    warnings: [...out.warnings, ...(out.bootConversion?.warnings ?? [])],
  };
}

/**
 * Linux, on the helper's worker: edits the managed disks attached to the helper, found by LUN under its
 * device root, as on Azure, where the import copied the blob and later blob writes never reach the disk.
 * The data disks are handed over too, read for their filesystem UUIDs.
 */
export async function prepareOnHelper(c: AzureContext, plan: AzurePlan, signal: AbortSignal): Promise<GuestPreparationResult> {
  const h = c.azure().helpers[plan.location];
  if (!h) throw new RestoreError(FailureType.Configuration, `no helper appliance is configured for location '${plan.location}'`);
  const at = { resourceGroup: h.resourceGroup, vmName: h.vmName, deviceRoot: h.deviceRoot };
  const device = async (d: (typeof plan.disks)[number]) => (await attachedDiskDevice(c.clients(), at, d.managedDiskId, { signal })).device;
  const osDisk = plan.disks.find((d) => d.os)!;
  const dataDiskPaths: string[] = [];
  for (const d of plan.disks.filter((x) => !x.os).sort((a, b) => a.diskIndex - b.diskIndex)) dataDiskPaths.push(await device(d));
  const out = await prepareGuestDiskIsolated(
    { osType: plan.osType, imagePath: await device(osDisk), dataDiskPaths, bootConversion: plan.bootConversion },
    { signal, devices: true },
  );
  return merged(out);
}

/**
 * Windows, on the backup server: edits the uploaded VHD blob (materialised locally, changed pages written
 * back) before the managed disks are imported from it, staging the agent installer when there is one.
 */
export async function prepareOnBackupServer(c: AzureContext, plan: AzurePlan, signal: AbortSignal): Promise<GuestPreparationResult> {
  const osDisk = plan.disks.find((d) => d.os)!;
  const workDir = path.join(os.tmpdir(), 'vmrestore-guest', plan.restoreId.replace(/[^A-Za-z0-9-]/g, '_'));
  mkdirSync(workDir, { recursive: true });
  const out = await editVhdBlob(c.blobs().getPageBlobClient(osDisk.blobName), {
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
}

export function guestActivities(c: AzureContext) {
  /** Runs one place's preparation, heartbeating while it edits; the test switch skips it altogether. */
  const prepare = async (
    plan: AzurePlan,
    where: (c: AzureContext, plan: AzurePlan, signal: AbortSignal) => Promise<GuestPreparationResult>,
  ): Promise<GuestPreparationResult> => {
    const ctx = Context.current();
    if (plan.skipGuestPreparation) {
      return { changes: [], warnings: ['guest preparation and boot conversion skipped (test switch skipGuestPreparation)'] };
    }
    const beat = setInterval(() => ctx.heartbeat({ phase: 'preparing' }), 1000);
    try {
      return await where(c, plan, ctx.cancellationSignal);
    } finally {
      clearInterval(beat);
    }
  };
  // Each edits the OS disk's guest for Azure, then, for a UEFI guest on a Generation 1 VM, converts it to boot
  // with BIOS. The editors run in an unprivileged child process without the worker's environment or
  // credentials (guest/isolation.ts); only its changes and warnings come back.
  return {
    /** Windows, on the backup server: the uploaded OS disk VHD is edited before the managed disks are made. */
    async prepareGuestOnBackupServer(args: { plan: AzurePlan }): Promise<GuestPreparationResult> {
      return prepare(args.plan, prepareOnBackupServer);
    },
    /** Linux, on the helper appliance's worker: the managed disks attached to the helper are edited. */
    async prepareGuestOnHelper(args: { plan: AzurePlan }): Promise<GuestPreparationResult> {
      return prepare(args.plan, prepareOnHelper);
    },
  };
}
