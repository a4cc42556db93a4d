import type { AzureRestoreLimits, AzureRestoreRequest } from './azure';
import type { LeaseTarget } from './lease';
import type { VSphereRestoreLimits, VSphereRestoreRequest } from './vsphere';
import type { VerificationStatus } from './verification';

/**
 * Restore plans: many VMs restored in boot groups, with limits that follow the real bottlenecks. What the
 * plan file says, what the plan workflow shows, and the names of the limit leases. No I/O.
 */

/** One VM of a plan: a vSphere restore request (`target: vsphere`) or an Azure one (`target: azure`). */
export type PlanVm = (VSphereRestoreRequest & { target: 'vsphere' }) | (AzureRestoreRequest & { target: 'azure' });

/** What must happen after a group before the next one starts. */
export type PlanGate = 'verified' | 'approval';

export interface PlanGroup {
  name: string;
  vms: PlanVm[];
  /** Seconds to wait after the group (and its gate) before the next group starts. */
  delaySeconds?: number;
  /** `verified`: every restore of the group passed boot verification; `approval`: `plan approve`. */
  gate?: PlanGate;
}

/** Limits of a plan. The per-resource ones are leases shared by every plan and restore that names them. */
export interface PlanLimits extends VSphereRestoreLimits, AzureRestoreLimits {
  /** Restores of this plan running at once (default 4). */
  restoresPerPlan?: number;
}

export interface PlanSpec {
  /** The plan's name; its workflow id is `plan-<name>`. */
  name: string;
  groups: PlanGroup[];
  limits?: PlanLimits;
}

export type PlanVmState = 'pending' | 'running' | 'completed' | 'failed' | 'cancelled' | 'skipped' | 'not-started';

export interface PlanVmProgress {
  /** `<target>-<vmName>`: unique within a plan, the suffix of the VM's child workflow id. */
  key: string;
  group: number;
  target: 'vsphere' | 'azure';
  vmName: string;
  workflowId: string;
  state: PlanVmState;
  verification?: VerificationStatus;
  error?: string;
  /** For `skipped`: the completed run of an earlier plan run that restored it. */
  restoredBy?: string;
}

export interface PlanProgress {
  planId: string;
  name: string;
  /** What the plan is doing now, e.g. `group 2 of 3 (app)`, `waiting for approval after group 1 (db)`. */
  phase: string;
  /** Index of the group running or waiting, groups.length once done. */
  group: number;
  /** The groups' names, in order. */
  groups: string[];
  /** Set while a gate holds: which kind, and after which group. */
  waiting?: { gate: PlanGate | 'delay'; group: number; until?: string };
  vms: PlanVmProgress[];
  /** Runs of this plan's execution chain (continue-as-new keeps each run's history short). */
  runs: number;
}

export interface PlanVmResult {
  key: string;
  vmName: string;
  target: 'vsphere' | 'azure';
  workflowId: string;
  state: PlanVmState;
  verification?: VerificationStatus;
  error?: string;
}

export interface PlanResult {
  planId: string;
  vms: PlanVmResult[];
  /** Groups whose VMs ran, counting skipped ones; fewer than the plan's when a gate stopped it. */
  groupsRun: number;
  stoppedBy?: string;
}

export const DEFAULT_RESTORES_PER_PLAN = 4;

/** The memo key a plan's child carries: the fingerprint of the request it was started with. */
export const PLAN_FINGERPRINT_MEMO = 'planRequest';

/** The workflow id of a plan: stable across runs, so a re-run finds what the last one restored. */
export function planWorkflowId(name: string): string {
  return `plan-${name}`;
}

export function planVmKey(vm: Pick<PlanVm, 'target' | 'vmName'>): string {
  return `${vm.target}-${vm.vmName}`;
}

/** A VM's child workflow id: the same in every run of the plan, whatever its position in the file. */
export function planChildWorkflowId(planId: string, vm: Pick<PlanVm, 'target' | 'vmName'>): string {
  return `${planId}/${planVmKey(vm)}`;
}

/**
 * A limit is a lease with no VM behind it: holders reserve one slot each, and each acquire says the
 * capacity it accepts, so a limit holds across every plan and restore that uses the same resource.
 */
export function limitLeaseTarget(resource: 'host' | 'datastore' | 'storage-account' | 'region', name: string): LeaseTarget {
  return { kind: 'limit', name: `${resource}-${name}`, resourceGroup: '', vmName: `${resource} ${name}`, idleTimeoutMs: 0 };
}

/**
 * A short, stable digest of a VM's request (53-bit string hash, deterministic in workflow code): a re-run
 * skips a VM only when the restore that completed was asked for the same thing.
 */
export function requestFingerprint(vm: PlanVm): string {
  const text = stableJson(vm);
  let h1 = 0xdeadbeef;
  let h2 = 0x41c6ce57;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ c, 2654435761);
    h2 = Math.imul(h2 ^ c, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return (4294967296 * (2097151 & h2) + (h1 >>> 0)).toString(36);
}

function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>)
      .filter(([, x]) => x !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${stableJson(x)}`).join(',')}}`;
  }
  return JSON.stringify(v);
}
