import { TASK_QUEUE } from './task-queues';

/** What the sweeper finds and removes: resources that closed restores left behind. */
export type SweepItemKind =
  | 'vsphere-vm'
  | 'vsphere-snapshot'
  | 'hotadd-attachment'
  | 'azure-vm'
  | 'azure-nic'
  | 'azure-disk'
  | 'vhd-blob'
  | 'helper-attachment'
  | 'import-snapshot'
  | 'import-staging';

export interface SweepItem {
  kind: SweepItemKind;
  /** The resource: VM or disk name, ARM id, blob name, or `<proxy or helper VM>: <disk>`. */
  name: string;
  restoreId: string;
  /** Why it goes: the state of the restore's workflow ('TERMINATED', 'TIMED_OUT', 'no workflow', ...). */
  restoreState: string;
  /** 'removed', or in a dry run 'would remove'; 'failed' with `error` when removing it failed. */
  action: 'removed' | 'would remove' | 'failed';
  error?: string;
}

export interface SweepRequest {
  dryRun?: boolean;
  /**
   * Also remove what carries a restore id with no workflow at all. Off by default: a completed
   * restore's workflow disappears too once the namespace's retention has passed.
   */
  includeOrphans?: boolean;
}

export interface SweepReport {
  dryRun: boolean;
  items: SweepItem[];
  /**
   * Tagged resources left alone because their restore runs, completed, keeps what it made on failure, or
   * (without `includeOrphans`) has no workflow any more.
   */
  kept: number;
  /** Targets that could not be listed (unreachable vCenter, no Azure configured is not an error). */
  errors: string[];
  seconds: number;
}

/** The sweeper's schedule id per task queue. */
export function sweepScheduleId(taskQueue: string): string {
  return taskQueue === TASK_QUEUE ? `${TASK_QUEUE}-sweeper` : `${TASK_QUEUE}-sweeper@${taskQueue}`;
}
