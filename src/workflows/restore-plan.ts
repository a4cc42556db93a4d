import { executeChild, workflowInfo } from '@temporalio/workflow';
import type { VSphereRestoreRequest, VSphereRestoreResult } from '../domain/restore';
import { restoreToVSphere } from './restore-vsphere';

export interface RestorePlanRequest {
  /** Boot groups run in order; the VMs inside a group restore in parallel up to `concurrency`. */
  groups: VSphereRestoreRequest[][];
  concurrency?: number;
}

export interface RestorePlanResult {
  results: Array<{ vmName: string; workflowId: string; result?: VSphereRestoreResult; error?: string }>;
}

/** Restores many VMs as child workflows, group after group, with a concurrency limit. */
export async function restorePlan(req: RestorePlanRequest): Promise<RestorePlanResult> {
  const parentId = workflowInfo().workflowId;
  const limit = Math.max(1, req.concurrency ?? 2);
  const out: RestorePlanResult = { results: [] };
  for (const [g, group] of req.groups.entries()) {
    let next = 0;
    const lane = async () => {
      while (next < group.length) {
        const i = next++;
        const request = group[i];
        // Child ids are set explicitly: generated ones break replay and reset.
        const workflowId = `${parentId}/g${g}-${i}-${request.vmName}`;
        try {
          const result = await executeChild(restoreToVSphere, {
            workflowId,
            args: [{ ...request, restoreId: request.restoreId ?? workflowId }],
            staticSummary: `restore ${request.vmName} (group ${g + 1})`,
          });
          out.results.push({ vmName: request.vmName, workflowId, result });
        } catch (err) {
          out.results.push({ vmName: request.vmName, workflowId, error: err instanceof Error ? err.message : String(err) });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, group.length) }, lane));
  }
  return out;
}
