import type { GuestChange } from '../guest/types';
import type { VmConfig } from './vm';

export interface AzureRestoreRequest {
  restoreId?: string;
  restorePointId: string;
  vmName: string;
  resourceGroup?: string;
  location?: string;
  vmSize?: string;
  /** Full ARM id of the subnet for the VM's NIC. */
  subnetId?: string;
  /** 1 (default, BIOS) or 2 (UEFI). */
  generation?: 1 | 2;
  /** Name of a configured Azure proxy to power on for the transfer. */
  proxy?: string;
  keepOnFailure?: boolean;
}

export interface AzureDiskPlan {
  diskIndex: number;
  label: string;
  capacityBytes: number;
  nonZeroBytes: number;
  os: boolean;
  blobName: string;
  blobUrl: string;
  managedDiskName: string;
  managedDiskId: string;
}

export interface LeaseTarget {
  kind: 'proxy' | 'helper';
  /** Lease name: one entity workflow per resource. */
  name: string;
  resourceGroup: string;
  vmName: string;
  idleTimeoutMs: number;
}

export interface AzurePlan {
  restoreId: string;
  restorePointId: string;
  vm: VmConfig;
  vmName: string;
  subscriptionId: string;
  resourceGroup: string;
  location: string;
  vmSize: string;
  subnetId: string;
  generation: 1 | 2;
  osType: 'Linux' | 'Windows';
  container: string;
  storageAccountId: string;
  nicName: string;
  proxy?: LeaseTarget;
  helper?: LeaseTarget;
  disks: AzureDiskPlan[];
  keepOnFailure: boolean;
}

export interface AzureDiskResult {
  diskIndex: number;
  blobUrl: string;
  managedDiskId: string;
  bytesUploaded: number;
  zeroBytesSkipped: number;
  resumedFromOffset: number;
  seconds: number;
}

export interface AzureRestoreResult {
  restoreId: string;
  vmName: string;
  vmId: string;
  generation: 1 | 2;
  osType: 'Linux' | 'Windows';
  disks: AzureDiskResult[];
  guestChanges: GuestChange[];
  agentInstalled?: boolean;
}

/** Heartbeat of a VHD upload: highest contiguous offset that is durably in the blob. */
export interface UploadCheckpoint {
  diskIndex: number;
  offset: number;
  bytesSent: number;
}

export interface LeaseState {
  target: LeaseTarget;
  holders: string[];
  poweredOn: boolean;
  powerOns: number;
  powerOffs: number;
}
