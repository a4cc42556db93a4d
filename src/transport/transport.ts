import type { ProxyConfig } from '../config';
import type { DiskCheckpoint, DiskPlan, TransportMode } from '../domain/vsphere';
import type { RepositorySource, RestorePoint } from '../repository';
import type { Vm, VSphereClient } from '../vsphere';

/** Everything a transport needs to write one disk of a restore point; nothing of Temporal. */
export interface DiskWriteJob {
  datacenter: string;
  disk: DiskPlan;
  /** The disk's descriptor, '[ds] vm/vm.vmdk', and its flat extent, '[ds] vm/vm-flat.vmdk'. */
  diskFile: string;
  flatPath: string;
  proxy: ProxyConfig;
  /** The plan's proxy VM, for HotAdd. */
  proxyVmName?: string;
  /** Where the disk's blocks come from: the local repository or the repository host's data mover. */
  repository: RepositorySource;
  restorePoint: RestorePoint;
  readConcurrency: number;
  checkpointBytes: number;
  /** 0: unlimited. */
  throttleBytesPerSecond: number;
  /** HotAdd: how long to wait for the attached disk's device to appear (default 60 s). */
  deviceWaitMs?: number;
  /** The checkpoint of an earlier attempt, from the heartbeat. */
  previous?: DiskCheckpoint;
  signal: AbortSignal;
  /** The vSphere session, logged in on first use (the direct modes never need it). */
  session(): Promise<VSphereClient>;
  /** The proxy VM the disks are hot-added to. */
  proxyVm(): Promise<Vm>;
  /** Reports progress: a durable checkpoint, and at least every second while the write runs. */
  heartbeat(checkpoint: DiskCheckpoint): void;
  /** The writer's recent throughput, given the bytes done so far. */
  rate(bytesDone: number): number;
  /** Counts bytes read from the repository and sent on (metrics). */
  counted(bytes: number): void;
}

export interface DiskWriteOutcome {
  resumedFromOffset: number;
  bytesWritten: number;
  bytesSkippedZero: number;
  /** The path the bytes went through: the LUN device, the NFS mount's file, the hot-added device, or the URL. */
  writtenVia: string;
}

/** One way of getting a disk's bytes onto a datastore (the seed's transport modes). */
export interface DiskTransport {
  readonly mode: TransportMode;
  /** What the proxy must offer for this mode, in words. */
  readonly needs: string;
  /** Why `proxy` cannot write to datastore `datastore` this way, or undefined when it can (initialization). */
  cannot(proxy: ProxyConfig, datastore: string, anyThin: boolean): string | undefined;
  /** Writes the disk; a TransportUnavailable failure when the proxy finds it cannot after all. */
  write(job: DiskWriteJob): Promise<DiskWriteOutcome>;
}

/** The check every mode starts with: the proxy's configuration lists it. */
export function notConfigured(proxy: ProxyConfig, mode: TransportMode): string | undefined {
  return proxy.transports.includes(mode) ? undefined : `proxy '${proxy.name}' is not configured for ${mode}`;
}

/** Direct storage access writes thick disks only. */
export function thinBlocksDirect(mode: TransportMode, anyThin: boolean): string | undefined {
  return anyThin
    ? `${mode} is not available for VMs with thin-provisioned disks (direct storage access writes thick disks only)`
    : undefined;
}
