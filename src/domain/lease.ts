import { defineQuery, defineUpdate } from '@temporalio/workflow';
import { TASK_QUEUE } from './task-queues';

/**
 * Leases on shared resources (the Azure proxy and helper appliances, counting limits): one entity workflow
 * per resource. What the lease workflow, the activities that acquire and release, and the CLI share.
 */

/** The lease workflow's registered type, for starting it by name outside workflow code. */
export const LEASE_WORKFLOW_TYPE = 'resourceLease';

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

export const acquireLease = defineUpdate<{ poweredOn: boolean; powerOns: number }, [holder: string, request?: LeaseRequest]>('acquire');
export const releaseLease = defineUpdate<{ holders: number }, [holder: string]>('release');
export const leaseStateQuery = defineQuery<LeaseState>('state');

/** Default interval of the check that drops holders whose workflow closed without releasing. */
export const DEFAULT_HOLDER_CHECK_MS = 60_000;

/** One lease per resource and task queue: a lease must be served by the workers of the restores using it. */
export function leaseWorkflowId(target: Pick<LeaseTarget, 'kind' | 'name'>, taskQueue = TASK_QUEUE): string {
  return `lease-${target.kind}-${target.name}${taskQueue === TASK_QUEUE ? '' : `@${taskQueue}`}`;
}
