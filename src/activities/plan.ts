import type { Client } from '@temporalio/client';
import type { VerificationStatus } from '../domain/verification';
import { PLAN_FINGERPRINT_MEMO } from '../domain/plan';

export interface PlanChildCheck {
  workflowId: string;
  /** The fingerprint of the request the plan would start the VM with now. */
  fingerprint: string;
  /** The VM asks for boot verification: only a restore whose verification passed counts as done. */
  needsVerification: boolean;
}

export interface RestoredPlanVm {
  workflowId: string;
  runId: string;
  verification: VerificationStatus;
}

const isNotFound = (err: unknown) => (err as { name?: string }).name === 'WorkflowNotFoundError';

export function createPlanActivities(deps: { client: Client }) {
  return {
    /**
     * The VMs of a plan that an earlier run already restored: the latest run of the VM's child workflow
     * completed, from the same request (by fingerprint), and passed verification when the VM asks for it.
     */
    async findRestoredPlanVms(args: { children: PlanChildCheck[] }): Promise<RestoredPlanVm[]> {
      const out: RestoredPlanVm[] = [];
      for (const c of args.children) {
        const handle = deps.client.workflow.getHandle(c.workflowId);
        let desc;
        try {
          desc = await handle.describe();
        } catch (err) {
          if (isNotFound(err)) continue;
          throw err;
        }
        if (desc.status.name !== 'COMPLETED') continue;
        if (desc.memo?.[PLAN_FINGERPRINT_MEMO] !== c.fingerprint) continue;
        const result = (await handle.result()) as { verification?: { status?: VerificationStatus } } | undefined;
        const verification = result?.verification?.status ?? 'skipped';
        if (c.needsVerification && verification !== 'passed') continue;
        out.push({ workflowId: c.workflowId, runId: desc.runId, verification });
      }
      return out;
    },
  };
}

export type PlanActivities = ReturnType<typeof createPlanActivities>;
