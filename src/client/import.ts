import type { Client, WorkflowHandle } from '@temporalio/client';
import { RestoreKind, RestoreVm } from '../domain/search-attributes';
import { vsphereImportWorkflowId, type VSphereImportRequest } from '../domain/vsphere-import';
import { newRestoreSuffix } from './restore';
import { importFromVSphere } from '../workflows';

/** Starts `importFromVSphere` on the workers' queue: a restore point taken from a VM on vCenter. */
export async function startVSphereImport(
  client: Client,
  request: VSphereImportRequest,
  opts: { taskQueue: string; workflowId?: string },
): Promise<WorkflowHandle<typeof importFromVSphere>> {
  const workflowId = opts.workflowId ?? vsphereImportWorkflowId(request.vmName, newRestoreSuffix());
  return client.workflow.start(importFromVSphere, {
    taskQueue: opts.taskQueue,
    workflowId,
    args: [{ ...request, importId: request.importId ?? workflowId }],
    typedSearchAttributes: [
      { key: RestoreKind, value: 'vsphere-import' },
      { key: RestoreVm, value: request.vmName },
    ],
    staticSummary: `Take a restore point of ${request.vmName} from vSphere`,
    staticDetails: [`**VM:** ${request.vmName}`, `**Profile:** ${request.profile ?? '(default)'}`].join('\n\n'),
  });
}
