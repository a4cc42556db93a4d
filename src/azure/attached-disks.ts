/**
 * Finds, inside an Azure Linux VM (the helper appliance), the device of a data disk attached to it: the
 * LUN the attach used comes from the VM's storage profile, the device from the udev links Azure images
 * keep by LUN (`/dev/disk/azure/scsi1/lun<N>`; images with azure-vm-utils also `data/by-lun/<N>`). The lab
 * serves the same layout from another root.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { VirtualMachine } from '@azure/arm-compute';
import { AZURE_DEVICE_ROOT } from '../config';
import { FailureType, RestoreError } from '../domain/errors';
import type { ArmClients } from './arm-clients';

/** The LUN at which `diskId` is attached to `vm` as a data disk (ids compare case-insensitively). */
export function lunOfDisk(vm: Pick<VirtualMachine, 'name' | 'storageProfile'>, diskId: string): number {
  const want = diskId.toLowerCase();
  const dataDisks = vm.storageProfile?.dataDisks ?? [];
  const hit = dataDisks.find((d) => d.managedDisk?.id?.toLowerCase() === want);
  if (!hit) {
    const attached = dataDisks.map((d) => `lun ${d.lun}: ${d.managedDisk?.id ?? d.name ?? '?'}`).join(', ') || 'none';
    throw new RestoreError(
      FailureType.InvalidRequest,
      `managed disk '${diskId}' is not attached to VM '${vm.name ?? '?'}' as a data disk (attached: ${attached})`,
    );
  }
  return hit.lun;
}

/** Where a LUN's device may appear under `deviceRoot`, most common first. */
export function lunDeviceCandidates(lun: number, deviceRoot: string = AZURE_DEVICE_ROOT): string[] {
  return [path.join(deviceRoot, 'scsi1', `lun${lun}`), path.join(deviceRoot, 'data', 'by-lun', String(lun))];
}

export interface FindDeviceOptions {
  /** Default /dev/disk/azure. */
  deviceRoot?: string;
  /** How long to wait for udev to create the link after a hot attach (default 30 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/**
 * The device path of LUN `lun` (the link under `deviceRoot`, not its target), waiting for it to appear.
 * It must resolve to a block device (or, in the lab, a regular file).
 */
export async function findLunDevice(lun: number, opts: FindDeviceOptions = {}): Promise<string> {
  if (!Number.isInteger(lun) || lun < 0 || lun > 63) throw new RestoreError(FailureType.InvalidRequest, `LUN ${lun} is not 0-63`);
  const root = opts.deviceRoot ?? AZURE_DEVICE_ROOT;
  const candidates = lunDeviceCandidates(lun, root);
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  for (;;) {
    opts.signal?.throwIfAborted();
    for (const p of candidates) {
      let st: fs.Stats;
      try {
        st = await fs.promises.stat(p);
      } catch {
        continue;
      }
      if (st.isBlockDevice() || st.isFile()) return p;
      throw new RestoreError(FailureType.GuestPreparation, `${p} (LUN ${lun}) is neither a block device nor a disk image`);
    }
    if (Date.now() >= deadline) {
      throw new RestoreError(
        FailureType.GuestPreparation,
        `no device for LUN ${lun} appeared under ${root} (looked for ${candidates.join(', ')}); is the disk attached to this VM and is it running?`,
        false,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

export interface AttachedDisk {
  lun: number;
  /** The device path to open (a link under the device root). */
  device: string;
}

/**
 * Device of the managed disk `diskId` attached to the VM `vmName` (the appliance this code runs in): its LUN
 * from the VM's storage profile, then the device for that LUN under `deviceRoot`.
 */
export async function attachedDiskDevice(
  clients: Pick<ArmClients, 'compute'>,
  vm: { resourceGroup: string; vmName: string; deviceRoot?: string },
  diskId: string,
  opts: Omit<FindDeviceOptions, 'deviceRoot'> = {},
): Promise<AttachedDisk> {
  let model: VirtualMachine;
  try {
    model = await clients.compute.virtualMachines.get(vm.resourceGroup, vm.vmName, { abortSignal: opts.signal });
  } catch (err) {
    const e = err as { code?: string; message?: string };
    throw new RestoreError(
      FailureType.AzureTransient,
      `reading VM '${vm.vmName}' (resource group '${vm.resourceGroup}') for the LUN of disk '${diskId}' failed: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}`,
      false,
    );
  }
  const lun = lunOfDisk(model, diskId);
  return { lun, device: await findLunDevice(lun, { ...opts, deviceRoot: vm.deviceRoot }) };
}
