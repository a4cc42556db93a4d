import type { AzureCredentialConfig } from '../azure/credential';
import type { EncryptionConfig } from '../client/codec';
import type { TransportMode } from '../domain/vsphere';

/** A vCenter/ESXi connection; the password is a reference, never a literal in requests or history. */
export interface VSphereProfile {
  url: string;
  username: string;
  /** Name of an environment variable holding the password. */
  passwordEnv?: string;
  /** Path of a file holding the password. */
  passwordFile?: string;
  /** SHA-256 (or SHA-1) fingerprint of the server's TLS leaf certificate, colon-separated hex. */
  thumbprint?: string;
  /** Accept any certificate; for labs only, and only with `allowInsecure`. */
  insecure?: boolean;
  /**
   * Explicit consent to an `http://` URL or `insecure: true` (a lab, a test bed). Without it such a profile
   * is refused; with it every worker and CLI start warns.
   */
  allowInsecure?: boolean;
  datacenter?: string;
  /** Datastore used when a request names none. */
  datastore?: string;
}

export interface ProxyConfig {
  name: string;
  /** The proxy's own VM name in vSphere; required for HotAdd. */
  vmName?: string;
  transports: TransportMode[];
  /** Datastore name → local path where the proxy sees its files over NFS (direct-nas). */
  nasMounts?: Record<string, string>;
  /**
   * Datastore name → the block device through which the proxy sees the datastore's LUN (direct-san):
   * blocks are written there at the physical offsets of the flat extent's block map, which the host serves.
   */
  sanLuns?: Record<string, string>;
  /** Datastore name → the folder where hot-added disks appear on the proxy by UUID (hotadd), e.g. /dev/disk/by-id. */
  hotaddDevices?: Record<string, string>;
  /** vSphere profile this proxy writes to. */
  profile?: string;
  /** Disks this proxy writes at once (its task slots); further disks wait for a free slot. Default 4. */
  maxTasks?: number;
  /**
   * Whether the control worker also serves this proxy's task queue (in its own Worker, with its own
   * identity). The lab does this, since its proxies are folders on the same machine; a real deployment
   * runs `vmrestore worker --proxy NAME` on the proxy host and leaves this false (the default).
   */
  embeddedWorker?: boolean;
}

/** Azure target: where restored VMs, disks and VHD blobs go, and the shared proxy and helper VMs. */
export interface AzureConfig {
  subscriptionId: string;
  resourceGroup: string;
  location: string;
  /** Locations this target may restore to (the first is the default). */
  locations: string[];
  subnetId: string;
  storageAccountId: string;
  container: string;
  defaultVmSize: string;
  /** ARM endpoint; absent means https://management.azure.com. */
  armEndpoint?: string;
  caCertPath?: string;
  /**
   * How the worker signs in to ARM: an app registration with a client secret, DefaultAzureCredential, or a
   * token in an environment variable (`tokenEnv` is the short form of the last). Without any, real Azure
   * uses DefaultAzureCredential.
   */
  credential?: AzureCredentialConfig;
  /** The Blob storage connection string, read from `blobConnectionStringFile` when the config is loaded. */
  blobConnectionString?: string;
  blobConnectionStringEnv?: string;
  proxies: Array<{ name: string; resourceGroup: string; vmName: string; idleTimeoutSeconds: number }>;
  /** How often proxy and helper leases check that their holders' restores still run (default 60). */
  leaseHolderCheckSeconds?: number;
  /** Location → helper appliance VM for Linux guest preparation. */
  helpers: Record<string, HelperApplianceConfig>;
  /**
   * WindowsAzureVmAgent.msi, staged on restored Windows disks with a RunOnce entry that installs it. Without
   * it a Windows restore stages nothing for the agent, warns, and does not claim the agent.
   */
  windowsAgentInstaller?: AgentInstallerConfig;
  /**
   * Honours the request switches that exist for tests only (`skipGuestPreparation`, the negative control of
   * boot verification). Set only for the configuration the lab writes into its own state folder, when it is
   * loaded as the fallback (no VMRESTORE_CONFIG, no ./vmrestore.config.json); no configuration key turns it on.
   */
  allowTestSwitches?: boolean;
}

export interface AgentInstallerConfig {
  /** Absolute path on the worker (a relative one in a config file is taken from the file's directory). */
  path: string;
  /** Expected SHA-256 (64 hex digits); a file with another digest stops the restore. */
  sha256?: string;
}

export interface HelperApplianceConfig {
  resourceGroup: string;
  vmName: string;
  idleTimeoutSeconds: number;
  /**
   * Task queue of the worker that prepares disks attached to this helper (`vmrestore worker --helper
   * LOCATION`, run inside the appliance). Defaults to `<temporal.taskQueue>-helper-<location>`.
   */
  taskQueue?: string;
  /**
   * Whether the main worker also serves that queue. The lab does this, since its helper appliances are
   * simulated VMs; a real deployment runs the helper worker inside the appliance and leaves this false.
   */
  embeddedWorker: boolean;
  /**
   * Where the helper's worker finds the data disks attached to the appliance, by LUN: `<deviceRoot>/scsi1/lun<N>`
   * (Azure's udev rules). `/dev/disk/azure` on Azure; the lab points it at the simulator's device folder.
   */
  deviceRoot: string;
}

/** Task slots of a proxy whose configuration names none. */
export const DEFAULT_PROXY_MAX_TASKS = 4;

/** The udev-maintained folder where an Azure Linux VM sees its disks by LUN. */
export const AZURE_DEVICE_ROOT = '/dev/disk/azure';

/** The task queue the helper appliance of `location` serves. */
export function helperTaskQueue(config: Pick<AppConfig, 'temporal'>, location: string, helper: HelperApplianceConfig): string {
  return helper.taskQueue ?? `${config.temporal.taskQueue}-helper-${location}`;
}

/**
 * The backup repository: a local directory (the default, one machine), or on workers the HTTPS data mover of
 * the repository host (`url`). The bearer token is a reference (file or environment variable), never a literal.
 */
export interface RepositoryConfig {
  /** Local directory; on the repository host the one `repository serve` serves. */
  path: string;
  /** `https://host:port` of `vmrestore repository serve`; when set, restores read through it. */
  url?: string;
  tokenFile?: string;
  tokenEnv?: string;
  /** CA certificate (PEM) the data mover's certificate must chain to. */
  caFile?: string;
  /** SHA-256 fingerprint of the data mover's certificate, colon-separated hex (pins a self-signed one). */
  thumbprint?: string;
  /** Parallel chunk streams per disk read through the data mover (default 1). */
  streamsPerDisk?: number;
  /** The data mover's side: its TLS certificate and key (PEM files). */
  serve?: { certFile: string; keyFile: string };
}

export interface AppConfig {
  temporal: {
    address: string;
    namespace: string;
    taskQueue: string;
    uiUrl?: string;
    /** AES-GCM payload encryption: workflow inputs, results and heartbeats are sealed before they leave. */
    encryption?: EncryptionConfig;
  };
  repository: RepositoryConfig;
  vsphere: { defaultProfile: string; profiles: Record<string, VSphereProfile> };
  proxies: ProxyConfig[];
  restore: {
    diskConcurrency: number;
    readConcurrency: number;
    checkpointBytes: number;
    /** How long a disk waits while no proxy worker is live before the restore fails (default 1800). */
    proxyWaitSeconds: number;
  };
  azure?: AzureConfig;
  /**
   * Boot verification: `verifyBoot` runs on `<temporal.taskQueue>-verifier`, served by `vmrestore worker
   * --verifier` (a machine with qemu), or by the main worker too when `embeddedWorker` is true (the lab).
   */
  verifier?: { embeddedWorker: boolean };
  /** Worker metrics (Prometheus, host:port; `worker --metrics` overrides it) and trace export (OTLP/HTTP base URL). */
  telemetry?: { metrics?: string; otlpEndpoint?: string };
  /** True when this is the configuration `vmrestore lab up` wrote for the embedded lab. */
  fromLab: boolean;
  source: string;
}
