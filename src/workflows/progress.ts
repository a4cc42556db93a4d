import {
  setCurrentDetails,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
  type QueryDefinition,
} from '@temporalio/workflow';
import { renderDiskTable } from '../domain/progress';
import type { DiskProgress, RestorePhase, RestoreProgress } from '../domain/restore';
import { RestoreIdKey, RestoreKind, RestorePhaseKey, RestoreTarget, RestoreVm } from '../domain/search-attributes';

/**
 * What a restore shows while it runs: the `progress` query, the search attributes kept current and the
 * Web UI's current details with the per-disk table.
 */
export class RestoreTracker {
  readonly progress: RestoreProgress;

  constructor(
    kind: 'vsphere' | 'azure',
    restoreId: string,
    vmName: string,
    query: QueryDefinition<RestoreProgress>,
    keepOnFailure = false,
  ) {
    this.progress = {
      restoreId,
      kind,
      vmName,
      phase: 'initializing',
      disks: [],
      startedAt: new Date(workflowInfo().startTime).toISOString(),
    };
    setHandler(query, () => this.progress);
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
    setCurrentDetails(`**${phase}**${message ? ` ${message}` : ''}\n\n${renderDiskTable(this.progress.disks)}`);
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
