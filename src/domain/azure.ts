import type { GuestChange } from '../guest/types';
import type { AzureRestoreLimits } from './plan';
import type { RestoreVerification, VerifyRequestFields } from './verification';
import type { VmConfig } from './vm';

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

export interface LeaseTarget {
  /** `limit`: a counting limit with no VM behind it (see limitLeaseTarget in domain/plan.ts). */
  kind: 'proxy' | 'helper' | 'limit';
  /** Lease name: one entity workflow per resource. */
  name: string;
  resourceGroup: string;
  vmName: string;
  idleTimeoutMs: number;
  /**
   * Data-disk slots the VM offers (the helper appliance: its size's maxDataDiskCount). Holders reserve
   * slots before attaching disks and wait while others hold them; unset means no slot accounting.
   */
  slots?: number;
  /** How often the lease checks that its holders' workflows still run (default 60 s). */
  holderCheckMs?: number;
}

/** The workflow execution that holds a lease; the lease drops it once that execution has closed. */
export interface LeaseOwner {
  workflowId: string;
  runId?: string;
}

/** What an acquire asks of a lease. */
export interface LeaseRequest {
  /** Data-disk slots to reserve for this holder (needs target.slots). */
  slots?: number;
  /** false reserves only: the VM is not started (yet). Defaults to true. */
  powerOn?: boolean;
  /** The capacity this holder accepts, instead of target.slots: a limit lease's holders each say theirs. */
  capacity?: number;
  /**
   * The holder's workflow execution (an acquire from an activity fills it in). A holder with an owner is
   * dropped, with its slots, when that execution closes without releasing. By convention a restore's
   * holder name is its restore id, which tags what it attached to the appliance.
   */
  owner?: LeaseOwner;
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

export interface LeaseState {
  target: LeaseTarget;
  holders: string[];
  /** Slots each holder reserved, for holders that reserved any. */
  reserved?: Record<string, number>;
  /** The workflow execution behind each holder, for holders that named one. */
  owners?: Record<string, LeaseOwner>;
  /** Holders dropped because their workflow closed without releasing. */
  droppedHolders?: number;
  poweredOn: boolean;
  powerOns: number;
  powerOffs: number;
}
