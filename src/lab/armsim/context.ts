/**
 * What a resource provider may use of the simulator: state, settings, the disk store, and the shared
 * steps every ARM resource takes (resource group lookup, long-running operations, quotas, run-command
 * output). Providers depend on this narrow surface, never on the engine that routes to them.
 */
import type { BlobInspector } from './blobs';
import type { Reply, ReqCtx } from './common';
import type { ArmError } from './errors';
import type { DiskStore } from './diskstore';
import type { OperationKind, OperationRec, ProvisioningState, ResourceGroupRec, RunCommandRec, SimState } from './state';
import type { Json } from './util';

export interface RunCommandRequest {
  vmName: string;
  resourceGroup: string;
  osType: 'Windows' | 'Linux';
  commandId: string;
  script: string[];
  parameters: Array<{ name: string; value: string }>;
}

export interface RunCommandOutput {
  stdout?: string;
  stderr?: string;
  /** Non-zero makes the result report a failed script, as the Linux agent does. */
  exitCode?: number;
}

export type RunCommandHandler = (req: RunCommandRequest) => RunCommandOutput | undefined | Promise<RunCommandOutput | undefined>;

/** Canned run-command output, configurable at run time through the admin endpoint. */
export interface RunCommandResponseRule extends RunCommandOutput {
  vmName?: string;
  /** Regular expression tested against the script lines joined with '\n'. */
  match?: string;
  count?: number;
}

export interface QuotaLimits {
  /** Total regional vCPUs per location. */
  regionalVCpus: number;
  /** vCPUs per size family per location, e.g. `{ standardDSv3Family: 10 }`; families not listed use `defaultFamilyVCpus`. */
  families: Record<string, number>;
  defaultFamilyVCpus: number;
}

export interface SimSettings {
  subscriptionId: string;
  /** Status polls until an operation completes: the first `lroPolls - 1` report InProgress; 0 completes it at once. */
  lroPolls: number;
  /** An operation completes after this long even if nobody polls it. */
  lroMaxMs: number;
  /** Retry-After (seconds) sent with operation responses and default for throttling faults. */
  retryAfterSeconds: number;
  quotas: QuotaLimits;
  runCommand?: RunCommandHandler;
}

/** Where SAS URLs point and the key that signs them; set by the server once its listener is up. */
export interface DiskAccessEndpoint {
  /** `scheme://host:port` of the listener as the simulator's own host sees it. */
  endpoint: string;
  key: Buffer;
}

export type ArmProvider = 'Microsoft.Compute' | 'Microsoft.Network';

/** What starting a long-running operation takes; the rest of its record is filled in by the simulator. */
export type OperationInit = {
  provider: ArmProvider;
  location: string;
  kind: OperationKind;
  resourceKey: string;
  action: string;
} & Partial<
  Pick<
    OperationRec,
    'targetPower' | 'previousPower' | 'releaseDiskIds' | 'deleteDiskIds' | 'releaseNicIds' | 'deleteNicIds' | 'result' | 'grant'
  >
>;

/** One item of a resource type addressed by a request: its resource group's name as stored, its id and lookup key. */
export interface ItemTarget {
  rgName: string;
  id: string;
  k: string;
}

export interface SimContext {
  readonly state: SimState;
  readonly settings: SimSettings;
  readonly subscriptionId: string;
  /** Each managed disk's bytes, and the device paths of running VMs. */
  readonly disks: DiskStore;
  readonly blobs: BlobInspector;
  /** Where read SAS URLs point; set once the disk access listener is up. */
  readonly diskAccess?: DiskAccessEndpoint;
  save(): void;
  requireResourceGroup(name: string): ResourceGroupRec;
  /** Resolves an item of a resource type; a write first lets the item's running operation finish. */
  itemTarget(ctx: ReqCtx, rg: string, name: string, provider: string, type: string): ItemTarget;
  /** Marks a resource Deleting and starts its delete operation: 202 with the polling headers. */
  acceptDelete(
    ctx: ReqCtx,
    resource: { location: string; provisioningState: ProvisioningState },
    init: Omit<OperationInit, 'action' | 'location'>,
  ): Reply;
  startOperation(ctx: ReqCtx, init: OperationInit): OperationRec;
  /** Headers of a 201/202 that starts an operation: both polling styles, as CRP sends them. */
  operationHeaders(ctx: ReqCtx, op: OperationRec, withLocation?: boolean): Record<string, string>;
  settleResource(resourceKey: string): void;
  /** vCPUs in use per family and in total for a location; deallocated VMs count too, as in Azure. */
  coreUsage(location: string, exceptVmKey?: string): { total: number; families: Record<string, number> };
  familyLimit(family: string): number;
  quotaError(family: string | undefined, familyDisplay: string, location: string, limit: number, usage: number, required: number): ArmError;
  runCommandOutput(req: RunCommandRequest): Promise<Required<RunCommandOutput>>;
  recordRunCommand(rec: RunCommandRec): void;
}

/**
 * One resource type of the simulator: how requests on its items are served, how its collection lists, and
 * which long-running operations it completes. The engine routes to providers through a table of these.
 */
export interface ResourceProvider {
  /** `namespace/type` in lower case, as in the request path: `microsoft.compute/disks`. */
  readonly type: string;
  /** Serves a request on one item; `rest` are the lower-cased segments after its name, `restRaw` as sent. */
  route(sim: SimContext, ctx: ReqCtx, rg: string, name: string, rest: string[], restRaw: string[]): Reply | Promise<Reply>;
  /** The collection in one resource group, or in the whole subscription when `rgName` is undefined. */
  list(sim: SimContext, rgName: string | undefined): Json[];
  /** The operation kinds whose completion this provider applies to its records. */
  readonly completes?: readonly OperationKind[];
  complete?(sim: SimContext, op: OperationRec, failed: boolean): void;
}
