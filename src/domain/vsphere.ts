import type { RestoreVerification, VerifyRequestFields } from './verification';
import type { VmConfig } from './vm';

export type TransportMode = 'direct-san' | 'direct-nas' | 'hotadd' | 'nbd';
export type TransportRequest = TransportMode | 'auto';
export type DiskFormat = 'same' | 'thin' | 'thick-lazy' | 'thick-eager';
export const TRANSPORT_REQUESTS: TransportRequest[] = ['auto', 'direct-san', 'direct-nas', 'hotadd', 'nbd'];
export const DISK_FORMATS: DiskFormat[] = ['same', 'thin', 'thick-lazy', 'thick-eager'];

export interface VSphereRestoreRequest extends VerifyRequestFields {
  /** Unique id of this restore; defaults to the workflow id's suffix. */
  restoreId?: string;
  restorePointId: string;
  vmName: string;
  /** Connection profile name from the worker's config; credentials never travel in the request. */
  profile?: string;
  datacenter?: string;
  datastore?: string;
  folder?: string;
  resourcePool?: string;
  diskFormat?: DiskFormat;
  /** Source network name → target network name. */
  networkMap?: Record<string, string>;
  transport?: TransportRequest;
  proxy?: string;
  powerOn?: boolean;
  keepOnFailure?: boolean;
  /** Upper bound on write throughput per disk in MB/s, to spare production storage; 0 = unlimited. */
  throttleMBps?: number;
  /** Disks written at once (default from the worker's config). */
  diskConcurrency?: number;
  /** Shared limits on disk writes per ESXi host and datastore (set by restore plans); none by default. */
  limits?: VSphereRestoreLimits;
  /**
   * How long a disk waits while no proxy worker is live (none polls its queue) before the restore fails
   * and compensates; default from the config's `restore.proxyWaitSeconds` (30 min).
   */
  proxyWaitSeconds?: number;
}

/** A proxy that can write this restore's disks: its task slots and the modes it offers here, best first. */
export interface ProxyCandidate {
  name: string;
  vmName?: string;
  transports: TransportMode[];
  maxTasks: number;
}

/** Shared limits on disk writes a single restore takes part in (set by its plan; none: it takes no lease). */
export interface VSphereRestoreLimits {
  /** Disk writes at once per ESXi host (the NFC/HotAdd streams a host serves). */
  disksPerHost?: number;
  /** Disk writes at once per datastore. */
  disksPerDatastore?: number;
}

export interface DiskPlan {
  diskIndex: number;
  label: string;
  capacityBytes: number;
  nonZeroBytes: number;
  thin: boolean;
  eagerlyScrub: boolean;
  /** Modes to try in order; the first that works is used. */
  transports: TransportMode[];
}

/** What initialization decided; everything later steps need, without secrets. */
export interface VSpherePlan {
  restoreId: string;
  restorePointId: string;
  vm: VmConfig;
  vmName: string;
  profile: string;
  datacenter: string;
  datastore: string;
  folder: string;
  resourcePool: string;
  networks: string[];
  /** The best candidate: the proxy of a disk written before proxies were chosen per disk. */
  proxy: string;
  proxyVmName?: string;
  /** Every proxy that can write this restore, best transport first; each disk takes a slot on one of them. */
  proxies?: ProxyCandidate[];
  /** Seconds a disk waits with no live proxy before the restore fails. */
  proxyWaitSeconds?: number;
  disks: DiskPlan[];
  requiredBytes: number;
  freeBytes: number;
  throttleMBps: number;
  diskConcurrency: number;
  powerOn: boolean;
  keepOnFailure: boolean;
}

export interface CreatedVm {
  vmRef: string;
  vmName: string;
  /** Datastore paths of the disk descriptors, by disk index. */
  diskFiles: string[];
  created: boolean;
}

export interface DiskWriteResult {
  diskIndex: number;
  transport: TransportMode;
  bytesWritten: number;
  bytesSkippedZero: number;
  datastorePath: string;
  flatPath: string;
  resumedFromOffset: number;
  seconds: number;
  /** The proxy that wrote the disk, and the identity of its worker (also in the history's started event). */
  proxy?: string;
  workerIdentity?: string;
  /** Proxies lost while writing this disk, in order; the disk continued on the next. */
  failedOver?: string[];
  /** What the proxy wrote through: the LUN device (direct-san), the file on its NFS mount (direct-nas), the hot-added device (hotadd), the datastore URL (nbd). */
  writtenVia?: string;
}

export interface VSphereRestoreResult {
  restoreId: string;
  vmName: string;
  vmRef: string;
  datastore: string;
  proxy: string;
  poweredOn: boolean;
  disks: DiskWriteResult[];
  /** The boot verification: `skipped` unless the request asked for it. */
  verification: RestoreVerification;
}

/** Heartbeat details of a disk write: small, no secrets. */
export interface DiskCheckpoint {
  diskIndex: number;
  offset: number;
  bytes: number;
  transport: TransportMode;
  /** The writer's recent throughput, for `vmrestore status`. */
  bytesPerSecond?: number;
}
