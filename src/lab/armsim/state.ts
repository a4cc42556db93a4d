import fs from 'node:fs';
import path from 'node:path';

export type OsType = 'Windows' | 'Linux';
export type HyperVGeneration = 'V1' | 'V2';
/** Steady and transitional power states, as the instance view reports them after `PowerState/`. */
export type PowerState = 'running' | 'stopped' | 'deallocated' | 'starting' | 'stopping' | 'deallocating';
export type ProvisioningState = 'Creating' | 'Updating' | 'Deleting' | 'Succeeded' | 'Failed';

export interface ResourceGroupRec {
  id: string;
  name: string;
  location: string;
  tags?: Record<string, string>;
}

export interface SubnetRec {
  name: string;
  addressPrefix: string;
}

export interface VnetRec {
  id: string;
  name: string;
  resourceGroup: string;
  location: string;
  tags?: Record<string, string>;
  addressPrefixes: string[];
  subnets: SubnetRec[];
  resourceGuid: string;
  provisioningState: ProvisioningState;
}

export interface StorageAccountRec {
  id: string;
  name: string;
  resourceGroup: string;
  location: string;
  /** Blob endpoint with a trailing slash; for Azurite this includes the account path segment. */
  blobEndpoint: string;
  /** Account name and key used to read blobs behind `blobEndpoint` (Azurite's account). */
  blobAccountName: string;
  blobAccountKey: string;
}

export interface DiskRec {
  id: string;
  name: string;
  resourceGroup: string;
  location: string;
  tags?: Record<string, string>;
  skuName: string;
  osType?: OsType;
  hyperVGeneration?: HyperVGeneration;
  createOption: string;
  sourceUri?: string;
  storageAccountId?: string;
  sourceResourceId?: string;
  diskSizeGB: number;
  diskSizeBytes: number;
  uniqueId: string;
  timeCreated: string;
  provisioningState: ProvisioningState;
  /** Lower-cased id of the VM the disk is attached to (ARM `managedBy`). */
  managedBy?: string;
  /** Read access granted with beginGetAccess (diskState ActiveSAS until revoked or expired). */
  access?: DiskAccessGrant;
  /** Writable properties the simulator does not model, echoed back unchanged. */
  extraProperties?: Record<string, unknown>;
}

/** A read SAS on a disk: its URL path is `/<container>/abcd`, its query names `id` and carries a signature. */
export interface DiskAccessGrant {
  id: string;
  container: string;
  /** Epoch ms after which the SAS is refused and the disk is no longer ActiveSAS. */
  expiresAt: number;
}

export interface VmDiskRef {
  lun?: number;
  /** Lower-cased id of the managed disk. */
  diskId: string;
  name: string;
  /** The createOption the disk was attached with ('Attach', or 'Empty' for disks the VM created). */
  createOption: string;
  caching: string;
  deleteOption: 'Detach' | 'Delete';
  osType?: OsType;
}

export interface VmNicRef {
  /** Lower-cased id of the network interface. */
  id: string;
  primary?: boolean;
  deleteOption?: 'Detach' | 'Delete';
}

export interface VmRec {
  id: string;
  name: string;
  resourceGroup: string;
  location: string;
  tags?: Record<string, string>;
  vmId: string;
  vmSize: string;
  osType: OsType;
  hyperVGeneration: HyperVGeneration;
  osDisk: VmDiskRef;
  dataDisks: VmDiskRef[];
  nics: VmNicRef[];
  powerState: PowerState;
  provisioningState: ProvisioningState;
  timeCreated: string;
  extraProperties?: Record<string, unknown>;
  /** Code of the last failed operation, shown as `ProvisioningState/failed/<code>`. */
  lastFailureCode?: string;
}

export interface NicIpConfigRec {
  name: string;
  subnetId: string;
  privateIPAddress: string;
  privateIPAllocationMethod: 'Dynamic' | 'Static';
  primary: boolean;
}

export interface NicRec {
  id: string;
  name: string;
  resourceGroup: string;
  location: string;
  tags?: Record<string, string>;
  ipConfigurations: NicIpConfigRec[];
  macAddress: string;
  enableAcceleratedNetworking: boolean;
  /** Lower-cased id of the VM using the NIC. */
  virtualMachineId?: string;
  resourceGuid: string;
  provisioningState: ProvisioningState;
  extraProperties?: Record<string, unknown>;
}

export type OperationKind =
  | 'diskPut'
  | 'diskDelete'
  | 'vmPut'
  | 'vmDelete'
  | 'vmPower'
  | 'vmRunCommand'
  | 'vmAttachDetach'
  | 'diskGrantAccess'
  | 'diskRevokeAccess'
  | 'nicPut'
  | 'nicDelete'
  | 'vnetPut';

export interface OperationRec {
  id: string;
  provider: 'Microsoft.Compute' | 'Microsoft.Network';
  location: string;
  kind: OperationKind;
  /** Lower-cased id of the resource the operation acts on. */
  resourceKey: string;
  /** Name of the action for logs and messages, e.g. 'start' or 'PUT'. */
  action: string;
  status: 'InProgress' | 'Succeeded' | 'Failed';
  pollsRemaining: number;
  /** Epoch ms after which the operation completes even if nobody polls it. */
  deadline: number;
  startTime: string;
  endTime?: string;
  failWith?: { status: number; code: string; message: string };
  error?: { code: string; message: string };
  /** Body served by the Location (monitor) URL once the operation succeeded. */
  result?: unknown;
  targetPower?: PowerState;
  previousPower?: PowerState;
  /** Disks and NICs the operation releases (or deletes) when it completes. */
  releaseDiskIds?: string[];
  /** The grant a diskGrantAccess operation puts in place when it completes. */
  grant?: DiskAccessGrant;
  deleteDiskIds?: string[];
  releaseNicIds?: string[];
  deleteNicIds?: string[];
}

export interface RunCommandRec {
  at: string;
  vmId: string;
  vmName: string;
  commandId: string;
  script: string[];
  parameters: Array<{ name: string; value: string }>;
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface SimState {
  schema: 1;
  subscriptionId: string;
  resourceGroups: Record<string, ResourceGroupRec>;
  vnets: Record<string, VnetRec>;
  storageAccounts: Record<string, StorageAccountRec>;
  disks: Record<string, DiskRec>;
  vms: Record<string, VmRec>;
  nics: Record<string, NicRec>;
  operations: Record<string, OperationRec>;
  runCommands: RunCommandRec[];
}

export function emptyState(subscriptionId: string): SimState {
  return {
    schema: 1,
    subscriptionId,
    resourceGroups: {},
    vnets: {},
    storageAccounts: {},
    disks: {},
    vms: {},
    nics: {},
    operations: {},
    runCommands: [],
  };
}

/** ARM ids and names compare case-insensitively; maps are keyed by the lower-cased form. */
export const key = (idOrName: string): string => idOrName.toLowerCase();

/** Loads and persists the simulator state as one JSON file, replaced atomically on every save. */
export class StateStore {
  readonly file: string;
  state: SimState;

  constructor(stateDir: string, subscriptionId: string) {
    fs.mkdirSync(stateDir, { recursive: true });
    this.file = path.join(stateDir, 'armsim-state.json');
    this.state = emptyState(subscriptionId);
    if (fs.existsSync(this.file)) {
      const loaded = JSON.parse(fs.readFileSync(this.file, 'utf8')) as SimState;
      if (loaded.schema !== 1) throw new Error(`${this.file}: unsupported state schema ${String(loaded.schema)}`);
      if (loaded.subscriptionId.toLowerCase() !== subscriptionId.toLowerCase()) {
        throw new Error(`${this.file} belongs to subscription ${loaded.subscriptionId}, not ${subscriptionId}; use another state dir`);
      }
      this.state = { ...emptyState(subscriptionId), ...loaded };
    }
  }

  save(): void {
    // Write-then-rename so a crash never leaves a half-written state file behind.
    const tmp = `${this.file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(this.state, null, 1));
    fs.renameSync(tmp, this.file);
  }
}
