import { setCurrentDetails, setHandler, upsertMemo, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import {
  diskProgressSignal,
  etaSeconds,
  progressQuery,
  renderDiskTable,
  type DiskProgress,
  type DiskProgressReport,
  type RestorePhase,
  type RestoreProgress,
} from '../domain/progress';
import { RestoreIdKey, RestoreKind, RestorePhaseKey, RestoreTarget, RestoreVm } from '../domain/search-attributes';

/**
 * What a restore shows while it runs: the `progress` query, the search attributes kept current and the
 * Web UI's current details with the per-disk table.
 */
export class RestoreTracker {
  readonly progress: RestoreProgress;

  constructor(kind: 'vsphere' | 'azure', restoreId: string, vmName: string, keepOnFailure = false) {
    this.progress = {
      restoreId,
      kind,
      vmName,
      phase: 'initializing',
      disks: [],
      startedAt: new Date(workflowInfo().startTime).toISOString(),
    };
    setHandler(progressQuery, () => this.progress);
    setHandler(diskProgressSignal, (r) => this.report(r));
    upsertSearchAttributes([
      { key: RestoreKind, value: kind },
      { key: RestoreVm, value: vmName },
      // The sweeper finds the workflow behind a tagged resource by its restore id, and leaves alone what
      // a restore that keeps its work on failure made.
      { key: RestoreIdKey, value: restoreId },
    ]);
    upsertMemo({ keepOnFailure });
    this.phase('initializing');
  }

  phase(phase: string, message?: string): void {
    this.progress.phase = phase as RestorePhase;
    this.progress.message = message;
    upsertSearchAttributes([{ key: RestorePhaseKey, value: phase }]);
    for (const d of this.progress.disks) if (d.state === 'done') d.etaSeconds = 0;
    this.showDetails();
  }

  /** A writer's report: live bytes, throughput and ETA for the query and the current details (no history). */
  private report(r: DiskProgressReport): void {
    const row = this.progress.disks.find((d) => d.diskIndex === r.diskIndex);
    if (!row || row.state !== 'writing') return;
    // The latest report is the truth: a retry or another transport may start the disk over.
    row.bytesDone = Math.min(r.bytesDone, row.bytesTotal);
    row.bytesPerSecond = r.bytesPerSecond;
    row.etaSeconds = etaSeconds(row.bytesDone, row.bytesTotal, r.bytesPerSecond);
    row.reportedAt = new Date(r.at).toISOString();
    if (r.transport) row.transport = r.transport;
    this.showDetails();
  }

  private showDetails(): void {
    const message = this.progress.message;
    setCurrentDetails(`**${this.progress.phase}**${message ? ` ${message}` : ''}\n\n${renderDiskTable(this.progress.disks)}`);
  }

  target(target: string): void {
    upsertSearchAttributes([{ key: RestoreTarget, value: target }]);
  }

  disks(disks: Array<{ diskIndex: number; label: string; capacityBytes: number }>): DiskProgress[] {
    this.progress.disks = disks.map((d) => ({
      diskIndex: d.diskIndex,
      label: d.label,
      bytesDone: 0,
      bytesTotal: d.capacityBytes,
      state: 'pending',
    }));
    return this.progress.disks;
  }
}
