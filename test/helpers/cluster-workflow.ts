import { upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import { RestorePhaseKey, RestoreVm } from '../../src/domain/search-attributes';

/** A workflow of the cluster test: sets two of the project's search attributes, as restores do, and ends. */
export async function clusterProbe(vmName: string): Promise<string> {
  upsertSearchAttributes([
    { key: RestoreVm, value: vmName },
    { key: RestorePhaseKey, value: 'done' },
  ]);
  return `${workflowInfo().workflowId} ran for ${vmName}`;
}
