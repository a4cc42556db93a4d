import {
  CancellationScope,
  defineQuery,
  isCancellation,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  uuid4,
  workflowInfo,
} from '@temporalio/workflow';
import type { VSphereImportActivities } from '../activities/vsphere-import';
import { renderDiskTable } from '../domain/progress';
import type { DiskProgress } from '../domain/progress';
import { RestoreKind, RestorePhaseKey, RestoreVm } from '../domain/search-attributes';
import type { ImportDiskResult, VSphereImportRequest, VSphereImportResult } from '../domain/vsphere-import';
import { controlOptions, transferOptions } from './activity-options';

export type ImportPhase =
  | 'initializing'
  | 'creating-snapshot'
  | 'reading-disks'
  | 'saving-restore-point'
  | 'removing-snapshot'
  | 'compensating'
  | 'completed'
  | 'failed'
  | 'cancelled';

/** The same shape as a restore's progress, so `vmrestore status` shows an import too. */
export interface ImportProgress {
  importId: string;
  kind: 'vsphere-import';
  vmName: string;
  phase: ImportPhase;
  disks: DiskProgress[];
  startedAt: string;
  restorePointId?: string;
  message?: string;
}

export const importProgressQuery = defineQuery<ImportProgress>('progress');

const control = proxyActivities<VSphereImportActivities>(controlOptions('vsphere'));
const reader = (summary: string) => proxyActivities<VSphereImportActivities>(transferOptions(summary));

/** rp-<yyyymmddHHMMss of the workflow start>-<6 hex>, fixed for the run so a retried save is idempotent. */
function restorePointIdFor(start: Date): string {
  const stamp = start.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  return `rp-${stamp}-${uuid4().replace(/-/g, '').slice(0, 6)}`;
}

/**
 * A restore point taken from a running VM on vCenter: snapshot → each disk read through the datastore
 * file API into the repository (only changed chunks stored) → restore point saved with the VM's config →
 * snapshot removed. A failure or cancel removes the snapshot and the staged block maps.
 */
export async function importFromVSphere(request: VSphereImportRequest): Promise<VSphereImportResult> {
  const info = workflowInfo();
  const importId = request.importId ?? info.workflowId;
  const progress: ImportProgress = {
    importId,
    kind: 'vsphere-import',
    vmName: request.vmName,
    phase: 'initializing',
    disks: [],
    startedAt: new Date(info.startTime).toISOString(),
  };
  setHandler(importProgressQuery, () => progress);
  upsertSearchAttributes([
    { key: RestoreKind, value: 'vsphere-import' },
    { key: RestoreVm, value: request.vmName },
  ]);
  const setPhase = (phase: ImportPhase, message?: string) => {
    progress.phase = phase;
    progress.message = message;
    upsertSearchAttributes([{ key: RestorePhaseKey, value: phase }]);
    setCurrentDetails(`**${phase}**${message ? ` ${message}` : ''}\n\n${renderDiskTable(progress.disks)}`);
  };
  setPhase('initializing');

  const plan = await control.prepareVSphereImport({ ...request, importId, restorePointId: restorePointIdFor(new Date(info.startTime)) });
  progress.restorePointId = plan.restorePointId;
  try {
    setPhase('creating-snapshot', `'${plan.snapshotName}' of ${plan.vmName}`);
    const snapshot = await control.createImportSnapshot(plan);
    progress.disks = snapshot.disks.map((d) => ({
      diskIndex: d.diskIndex,
      label: d.label,
      bytesDone: 0,
      bytesTotal: d.capacityBytes,
      state: 'pending',
    }));

    setPhase('reading-disks', plan.parentId ? `incremental on ${plan.parentId}` : 'first restore point of this VM');
    const disks: ImportDiskResult[] = [];
    for (const d of snapshot.disks) {
      const row = progress.disks[d.diskIndex];
      row.state = 'writing';
      setPhase('reading-disks');
      disks.push(await reader(`read disk ${d.diskIndex} (${d.label})`).importVSphereDisk({ plan, snapshot, diskIndex: d.diskIndex }));
      row.state = 'done';
      row.bytesDone = row.bytesTotal;
    }

    setPhase('saving-restore-point', plan.restorePointId);
    const saved = await control.saveImportedRestorePoint({ plan, snapshot });

    setPhase('removing-snapshot');
    const snapshotRemoved = await control.removeImportSnapshot({ plan });
    const sum = (k: 'bytesRead' | 'chunksWritten' | 'bytesWritten' | 'chunksReused' | 'zeroBlocks') => disks.reduce((n, d) => n + d[k], 0);
    const stats = {
      bytesRead: sum('bytesRead'),
      chunksWritten: sum('chunksWritten'),
      bytesWritten: sum('bytesWritten'),
      chunksReused: sum('chunksReused'),
      zeroBlocks: sum('zeroBlocks'),
    };
    setPhase('completed', `${saved.restorePointId}: ${stats.chunksWritten} chunks written, ${stats.chunksReused} reused`);
    return { importId, ...saved, vmName: plan.vmName, snapshotRemoved, disks, stats };
  } catch (err) {
    const cancelled = isCancellation(err);
    setPhase('compensating', cancelled ? 'import cancelled' : 'import failed');
    // The snapshot must go also when the workflow itself was cancelled: it grows on the production VM.
    await CancellationScope.nonCancellable(async () => {
      for (const undo of [() => control.removeImportSnapshot({ plan }), () => control.discardImportStaging({ plan })]) {
        try {
          await undo();
        } catch {
          // Keep undoing the rest; the original failure is what the caller needs to see.
        }
      }
    });
    for (const row of progress.disks) if (row.state === 'writing') row.state = 'failed';
    setPhase(cancelled ? 'cancelled' : 'failed', err instanceof Error ? err.message : String(err));
    throw err;
  }
}
