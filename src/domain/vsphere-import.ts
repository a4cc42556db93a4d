import type { VmConfig } from './vm';

/** Taking a restore point straight from a VM on vCenter: `repo import --from-vsphere VM`. */
export interface VSphereImportRequest {
  /** Name of the VM on vCenter. */
  vmName: string;
  /** Connection profile from the worker's config; credentials never travel in the request. */
  profile?: string;
  /** Default: the profile's datacenter. */
  datacenter?: string;
  /** Set by the client to the workflow id; ties the snapshot and the staged block maps to this import. */
  importId?: string;
}

/** One disk as the snapshot shows it, and how the import reads it. */
export interface ImportDiskPlan {
  diskIndex: number;
  label: string;
  capacityBytes: number;
  /** vSphere device key, for QueryChangedDiskAreas. */
  deviceKey: number;
  /** Descriptor of the snapshot's backing, e.g. '[LocalDS_0] web01/web01.vmdk'. */
  descriptor: string;
  /** The extent read through the datastore file API, e.g. '[LocalDS_0] web01/web01-flat.vmdk'. */
  flatFile: string;
  /** Change id of the snapshot's disk (CBT); absent when the endpoint tracks no changes. */
  changeId?: string;
  /** The previous restore point's change id for the same disk: what QueryChangedDiskAreas compares with. */
  parentChangeId?: string;
}

/** What preparation decided: everything later steps need, without secrets. */
export interface VSphereImportPlan {
  importId: string;
  /** Chosen up front, so a retried save finds the restore point it already wrote. */
  restorePointId: string;
  profile: string;
  datacenter: string;
  vmRef: string;
  vmName: string;
  snapshotName: string;
  /** Newest restore point of the same VM: its chunks are reused and its block maps compared. */
  parentId: string | null;
  blockSize: number;
}

export interface VSphereImportSnapshot {
  snapshotRef: string;
  vm: VmConfig;
  changeTrackingEnabled: boolean;
  disks: ImportDiskPlan[];
}

/** How a disk's unchanged blocks were found. */
export type ChangeDetection = 'full' | 'digest' | 'cbt';

export interface ImportDiskResult {
  diskIndex: number;
  changeDetection: ChangeDetection;
  /** Bytes fetched from the datastore. */
  bytesRead: number;
  chunksWritten: number;
  bytesWritten: number;
  /** Non-zero blocks whose chunk was already stored (same as the parent's block, or elsewhere in the repository). */
  chunksReused: number;
  zeroBlocks: number;
  /** Blocks CBT reported unchanged: taken from the parent without a byte read. */
  blocksSkippedByCbt: number;
  /** Why CBT was not used, when it was not. */
  cbtUnavailable?: string;
  /** Where this attempt started: the last staged checkpoint of an earlier attempt, else 0. */
  resumedFromOffset: number;
  seconds: number;
}

export interface VSphereImportResult {
  importId: string;
  restorePointId: string;
  parentId: string | null;
  vmName: string;
  snapshotRemoved: boolean;
  disks: ImportDiskResult[];
  stats: {
    bytesRead: number;
    chunksWritten: number;
    bytesWritten: number;
    chunksReused: number;
    zeroBlocks: number;
  };
}

/** Heartbeat details of a disk read: `offset` is how far it has read (progress), `stagedOffset` what a retry resumes from. */
export interface ImportDiskCheckpoint {
  diskIndex: number;
  offset: number;
  bytes: number;
  stagedOffset: number;
}

/** Workflow ids say what they are: import-vsphere-<vm>-<id>. */
export function vsphereImportWorkflowId(vmName: string, suffix: string): string {
  return `import-vsphere-${vmName.replace(/[^A-Za-z0-9._-]/g, '_')}-${suffix}`;
}
