import { executeChild, workflowInfo } from '@temporalio/workflow';
import type { AzureRestoreRequest, AzureRestoreResult } from '../domain/azure';
import type { VSphereRestoreRequest, VSphereRestoreResult } from '../domain/vsphere';
import { restoreToAzure } from './restore-azure';
import { restoreToVSphere } from './restore-vsphere';

/** One VM of a plan: a vSphere restore (the default) or, with `target: 'azure'`, a restore to Azure. */
export type RestorePlanEntry = (VSphereRestoreRequest & { target?: 'vsphere' }) | (AzureRestoreRequest & { target: 'azure' });

export interface RestorePlanRequest {
  /** Boot groups run in order; the VMs inside a group restore in parallel up to `concurrency`. */
  groups: RestorePlanEntry[][];
  concurrency?: number;
}

export interface RestorePlanResult {
  results: Array<{
    vmName: string;
    target: 'vsphere' | 'azure';
    workflowId: string;
    result?: VSphereRestoreResult | AzureRestoreResult;
    error?: string;
  }>;
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
        const entry = group[i];
        const target = entry.target ?? 'vsphere';
        // Child ids are set explicitly: generated ones break replay and reset. A child's restore id adds its
        // run id, so running the plan again under the same id restores under the same VM names and fails
        // with AlreadyExists on the first run's VMs instead of adopting or destroying them.
        const workflowId = `${parentId}/g${g}-${i}-${entry.vmName}`;
        const child = { workflowId, staticSummary: `restore ${entry.vmName} to ${target} (group ${g + 1})` };
        try {
          let result: VSphereRestoreResult | AzureRestoreResult;
          if (entry.target === 'azure') {
            const { target: _azure, ...request } = entry;
            result = await executeChild(restoreToAzure, { ...child, args: [request] });
          } else {
            const { target: _vsphere, ...request } = entry;
            result = await executeChild(restoreToVSphere, { ...child, args: [request] });
          }
          out.results.push({ vmName: entry.vmName, target, workflowId, result });
        } catch (err) {
          out.results.push({ vmName: entry.vmName, target, workflowId, error: err instanceof Error ? err.message : String(err) });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, group.length) }, lane));
  }
  return out;
}
