import type { Sinks } from '@temporalio/workflow';

export type RestoreOutcome = 'completed' | 'failed' | 'cancelled';

/** What workflow code reports to the worker's metrics, through a sink (workflows cannot do I/O). */
export interface RestoreMetricsSinks extends Sinks {
  restoreMetrics: {
    /** A restore workflow closed; `failureType` is empty unless it failed. */
    closed(outcome: RestoreOutcome, failureType: string, durationMs: number): void;
  };
}
