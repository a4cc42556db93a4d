import type { GuestChange } from '../guest/types';
import type { LeaseTarget } from './lease';
import type { RestoreVerification, VerifyRequestFields } from './verification';
import type { VmConfig } from './vm';

/** Shared limits a single restore takes part in (set by its plan; none: it takes no lease). */
export interface AzureRestoreLimits {
  /** VHD uploads at once per storage account. */
  uploadsPerStorageAccount?: number;
  /** Azure restores at once per subscription and region. */
  restoresPerRegion?: number;
}

export interface AzureRestoreRequest extends VerifyRequestFields {
  restoreId?: string;
  restorePointId: string;
  vmName: string;
  resourceGroup?: string;
  location?: string;
  vmSize?: string;
  /** Full ARM id of the subnet for the VM's NIC. */
  subnetId?: string;
  /** 1 (default, BIOS; a UEFI guest is converted to BIOS) or 2 (UEFI). */
  generation?: 1 | 2;
  /** Name of a configured Azure proxy to power on for the transfer. */
  proxy?: string;
  keepOnFailure?: boolean;
  /** Shared limits on uploads per storage account and restores per region (set by restore plans). */
  limits?: AzureRestoreLimits;
  /**
   * Test only: restore the disks without guest preparation or boot conversion (the negative control of
   * boot verification). Refused unless the target's configuration allows test switches (the lab's does).
   */
  skipGuestPreparation?: boolean;
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
  /** A UEFI guest restored as Generation 1: its OS disk is converted to boot with BIOS after preparation. */
  bootConversion?: 'uefi-to-bios';
  osType: 'Linux' | 'Windows';
  container: string;
  storageAccountId: string;
  nicName: string;
  proxy?: LeaseTarget;
  /** Task queue of the worker inside the Azure proxy, where the VHD uploads run when the restore names one. */
  proxyTaskQueue?: string;
  /** How long to wait, once the proxy runs, for its worker to poll that queue. */
  proxyWorkerWaitSeconds?: number;
  helper?: LeaseTarget;
  /** Task queue of the worker on the helper appliance, where Linux disks are prepared. */
  helperTaskQueue?: string;
  disks: AzureDiskPlan[];
  keepOnFailure: boolean;
  /** Windows: the agent installer checked at the start (absent: none configured, the agent is not installed). */
  agentInstaller?: AgentInstallerPlan;
  /** The test switch of the request: preparation and boot conversion are left out. */
  skipGuestPreparation?: boolean;
}

export interface AgentInstallerPlan {
  path: string;
  sha256: string;
  sizeBytes: number;
}

export interface AzureDiskResult {
  diskIndex: number;
  blobUrl: string;
  managedDiskId: string;
  bytesUploaded: number;
  zeroBytesSkipped: number;
  resumedFromOffset: number;
  seconds: number;
  /** Where the upload ran: the task queue and the identity of the worker that carried it. */
  uploadedBy: UploadWorker;
}

export interface UploadWorker {
  taskQueue: string;
  workerIdentity: string;
  /** The Azure proxy whose worker uploaded the disk, when the restore named one. */
  proxy?: string;
}

export interface AzureRestoreResult {
  restoreId: string;
  vmName: string;
  vmId: string;
  generation: 1 | 2;
  osType: 'Linux' | 'Windows';
  disks: AzureDiskResult[];
  guestChanges: GuestChange[];
  /** What guest preparation left alone or could not do (a symlink not followed, SSH not opened, ...). */
  guestWarnings: string[];
  /** Windows: true once Azure reports the staged agent Ready; false when no installer was configured. */
  agentInstalled?: boolean;
  /** The boot verification: `skipped` unless the request asked for it. */
  verification: RestoreVerification;
}

/** Heartbeat of a VHD upload: highest contiguous offset that is durably in the blob. */
export interface UploadCheckpoint {
  diskIndex: number;
  offset: number;
  bytesSent: number;
  /** The uploader's recent throughput, for `vmrestore status`. */
  bytesPerSecond?: number;
}
