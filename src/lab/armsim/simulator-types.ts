/** The simulator's options, its handle, and its request log entries. */
import type { QuotaLimits, RunCommandHandler } from './context';
import type { ActiveFault, FaultRule } from './faults';
import type { BlobBackend, SeedOptions } from './seed';
import type { SimState } from './state';
import type { ServicePrincipal } from './identity';

export interface ArmSimulatorOptions {
  /** Holds armsim-state.json and the lab CA/server certificate. */
  stateDir: string;
  /** 0 (default) picks a free port. */
  port?: number;
  host?: string;
  /** HTTPS with the lab CA (default). With false, clients need allowInsecureConnection and no bearer policy. */
  tls?: boolean;
  subscriptionId: string;
  blob: BlobBackend;
  /** Status polls until an operation completes (default 1: the first poll reports Succeeded; 0: done at once). */
  lroPolls?: number;
  /** Wall-clock bound after which running operations complete without polls (default 10 s). */
  lroMaxMs?: number;
  /** Retry-After seconds on operation and throttling replies (default 0). */
  retryAfterSeconds?: number;
  /** Require a Bearer Authorization header as ARM does (default: true with TLS, false without). */
  requireAuth?: boolean;
  /**
   * App registrations the built-in identity endpoint signs in (client credentials). Tokens it issues are
   * checked on every ARM request (signature, expiry); other bearer tokens pass unless `onlyIssuedTokens`.
   */
  principals?: ServicePrincipal[];
  /** Accept only tokens from the identity endpoint, as ARM accepts only Entra ID tokens. */
  onlyIssuedTokens?: boolean;
  /** Extra host names for the server certificate (say a container's service name). */
  certHosts?: string[];
  quotas?: Partial<QuotaLimits>;
  seed?: SeedOptions;
  /** Produces run-command output in-process; admin-configured canned responses take precedence. */
  runCommand?: RunCommandHandler;
  /** Request-log entries kept in memory (default 50000). */
  logLimit?: number;
  /**
   * Token the admin endpoints (`/_admin/...`) require in the `X-Admin-Token` header. Absent: the one in
   * `<stateDir>/admin-token`, created (mode 0600) on first start. Admin requests must also come from a
   * loopback address, whatever address the ARM endpoints listen on.
   */
  adminToken?: string;
  /**
   * Where running VMs' disks appear as devices, as an Azure Linux VM sees them under /dev/disk/azure:
   * `<deviceRoot>/<vmName>/scsi1/lun<N>` (data disks) and `<deviceRoot>/<vmName>/root` (OS disk), symlinks
   * to the disks' stores. Undefined: no device paths.
   */
  deviceRoot?: string;
  /** Port of the listener that serves disks' read SAS URLs (default 0: a free one). */
  diskAccessPort?: number;
}

export interface RequestLogEntry {
  seq: number;
  time: string;
  method: string;
  path: string;
  query: string;
  status: number;
  durationMs: number;
  /** ARM error code of an error reply. */
  code?: string;
  /** Kind of the fault rule that shaped this reply, if any. */
  fault?: string;
  faultId?: string;
  /** Client id of the app registration whose issued token authorised the request. */
  principal?: string;
}

export interface ArmSimulator {
  /** Base URL for the SDK clients' `endpoint` option, e.g. https://127.0.0.1:40123 */
  endpoint: string;
  /** PEM of the lab CA (undefined in plain-http mode). */
  caCertPath?: string;
  port: number;
  /** Base URL of the listener serving read SAS URLs of disks (same CA as `endpoint`). */
  diskAccessEndpoint: string;
  /** The file holding a managed disk's bytes (its data, without a VHD footer), by disk id. */
  diskStorePath(diskId: string): string | undefined;
  stateFile: string;
  /** What `X-Admin-Token` must say on `/_admin/...` requests, and the file holding it. */
  adminToken: string;
  adminTokenFile?: string;
  close(): Promise<void>;
  setFaults(rules: FaultRule[], append?: boolean): ActiveFault[];
  clearFaults(): void;
  requestLog(): RequestLogEntry[];
  clearRequestLog(): void;
  state(): SimState;
}
