import type { AppConfig } from '../config';
import type { VSphereImportRequest, VSphereImportResult } from '../domain/vsphere-import';
import { startVSphereImport } from '../client/import';
import { connectClient, waitWithProgress } from '../client/restore';

/**
 * `repo import --from-vsphere VM`: starts the import workflow on the workers and follows it to the end,
 * printing its phase and bytes read per disk, then the restore point (one JSON object with --json).
 */
export async function importFromVSphereCommand(
  config: AppConfig,
  request: VSphereImportRequest,
  out: (line: string) => void,
  json = false,
): Promise<number> {
  const { client, connection } = await connectClient(config);
  try {
    const handle = await startVSphereImport(client, request, { taskQueue: config.temporal.taskQueue });
    const ui = config.temporal.uiUrl
      ? ` (${config.temporal.uiUrl}/namespaces/${config.temporal.namespace}/workflows/${handle.workflowId})`
      : '';
    if (!json) out(`started ${handle.workflowId}${ui}`);
    const final = await waitWithProgress(client, handle.workflowId, json ? undefined : out);
    const result = final.result as VSphereImportResult | undefined;
    if (json) {
      out(JSON.stringify({ workflowId: handle.workflowId, status: final.status, result, error: final.failure }));
    } else if (result) {
      out(`restore point ${result.restorePointId} (parent ${result.parentId ?? 'none'}): ${JSON.stringify(result.stats)}`);
      for (const d of result.disks) {
        out(
          `  disk ${d.diskIndex}: ${d.changeDetection}, ${d.chunksWritten} chunks written, ${d.chunksReused} reused, ${d.zeroBlocks} zero` +
            (d.cbtUnavailable ? ` (no CBT: ${d.cbtUnavailable})` : ''),
        );
      }
    }
    return final.status === 'COMPLETED' ? 0 : 1;
  } finally {
    await connection.close();
  }
}
