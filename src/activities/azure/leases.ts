/** The shared proxy and helper VMs: their lease workflows acquired and released, their power switched by the lease. */
import { Context } from '@temporalio/activity';
import { WithStartWorkflowOperation } from '@temporalio/client';
import { FailureType, RestoreError } from '../../domain/errors';
import {
  acquireLease,
  LEASE_WORKFLOW_TYPE as resourceLease,
  leaseWorkflowId,
  releaseLease,
  type LeaseRequest,
  type LeaseState,
  type LeaseTarget,
} from '../../domain/lease';
import type { AzureContext } from './context';
import { armFailure } from './arm-errors';

export function leaseActivities(c: AzureContext) {
  const { config, client, clients, powerState } = c;
  /** The task queue of a running lease workflow with this id when it is not ours, else undefined. */
  const foreignLeaseQueue = async (workflowId: string): Promise<string | undefined> => {
    try {
      const d = await client.workflow.getHandle(workflowId).describe();
      return d.status.name === 'RUNNING' && d.taskQueue !== config.temporal.taskQueue ? d.taskQueue : undefined;
    } catch (err) {
      if ((err as { name?: string }).name === 'WorkflowNotFoundError') return undefined;
      throw err;
    }
  };
  return {
    /** Entity-workflow lease: returns once the shared VM runs (powering it on if needed). */
    async acquireLeaseActivity(args: { target: LeaseTarget; holder: string; request?: LeaseRequest }): Promise<void> {
      // The lease checks on this timer that the restore holding it still runs, and drops it otherwise.
      const target = { ...args.target, holderCheckMs: args.target.holderCheckMs ?? (config.azure?.leaseHolderCheckSeconds ?? 60) * 1000 };
      const initial: LeaseState = { target, holders: [], poweredOn: false, powerOns: 0, powerOffs: 0 };
      const execution = Context.current().info.workflowExecution;
      const owner = args.request?.owner ?? (execution ? { workflowId: execution.workflowId, runId: execution.runId } : undefined);
      const request: LeaseRequest = { ...args.request, owner };
      const workflowId = leaseWorkflowId(args.target, config.temporal.taskQueue);
      // An acquire on a lease that no worker of ours serves would wait forever; say so instead.
      const foreign = await foreignLeaseQueue(workflowId);
      if (foreign !== undefined) {
        throw new RestoreError(
          FailureType.InvalidRequest,
          `lease workflow '${workflowId}' runs on task queue '${foreign}', not on '${config.temporal.taskQueue}' ` +
            `that this worker serves; end it (temporal workflow terminate --workflow-id '${workflowId}') and retry`,
        );
      }
      await client.workflow.executeUpdateWithStart(acquireLease, {
        args: [args.holder, request],
        startWorkflowOperation: new WithStartWorkflowOperation(resourceLease, {
          workflowId,
          taskQueue: config.temporal.taskQueue,
          args: [initial],
          workflowIdConflictPolicy: 'USE_EXISTING',
          staticSummary:
            args.target.kind === 'limit' ? `Limit on ${args.target.vmName}` : `Lease on Azure ${args.target.kind} VM ${args.target.vmName}`,
        }),
      });
    },
    async releaseLeaseActivity(args: { target: LeaseTarget; holder: string }): Promise<void> {
      const workflowId = leaseWorkflowId(args.target, config.temporal.taskQueue);
      // A lease on another queue was never acquired through this worker, and an update to it would hang.
      if ((await foreignLeaseQueue(workflowId)) !== undefined) return;
      try {
        await client.workflow.getHandle(workflowId).executeUpdate(releaseLease, { args: [args.holder] });
      } catch (err) {
        // A lease workflow that no longer runs holds nothing to release.
        if ((err as { name?: string }).name !== 'WorkflowNotFoundError') throw err;
      }
    },
    async powerOnAzureVm(args: { resourceGroup: string; vmName: string }): Promise<void> {
      try {
        if ((await powerState(args.resourceGroup, args.vmName)) === 'running') return;
        await clients().compute.virtualMachines.start(args.resourceGroup, args.vmName);
      } catch (err) {
        armFailure(`starting VM '${args.vmName}'`, err);
      }
    },
    async deallocateAzureVm(args: { resourceGroup: string; vmName: string }): Promise<void> {
      try {
        if ((await powerState(args.resourceGroup, args.vmName)) === 'deallocated') return;
        await clients().compute.virtualMachines.deallocate(args.resourceGroup, args.vmName);
      } catch (err) {
        armFailure(`deallocating VM '${args.vmName}'`, err);
      }
    },
  };
}
