import { Context } from '@temporalio/activity';
import { ThroughputMeter } from '../domain/progress';
import { diskProgressSignal, type DiskProgressReport } from '../domain/progress';
import type { TransportMode } from '../domain/vsphere';

/**
 * A disk writer's progress for the people watching: its recent throughput (in the heartbeat details, for
 * `vmrestore status`) and now and then a signal to its workflow (for the Web UI's current details). Signals
 * go out at most every `minIntervalMs` and only after `minStep` of the disk has passed, so a disk adds at
 * most 1/minStep signals to the history however large it is.
 */
export class DiskProgressReporter {
  private readonly meter = new ThroughputMeter();
  private rate = 0;
  private lastSentAt = Number.NEGATIVE_INFINITY;
  private lastSentBytes = Number.NEGATIVE_INFINITY;
  private sending = false;
  private readonly send: (r: DiskProgressReport) => Promise<void>;

  constructor(
    private readonly opts: {
      diskIndex: number;
      bytesTotal: number;
      transport?: TransportMode;
      /** Where reports go; by default the signal to this activity's workflow. */
      send?: (r: DiskProgressReport) => Promise<void>;
      minIntervalMs?: number;
      minStep?: number;
    },
  ) {
    this.send = opts.send ?? signalWorkflowOf(Context.current());
  }

  get bytesPerSecond(): number {
    return Math.round(this.rate);
  }

  /** Records the bytes done so far; returns the recent throughput in bytes per second. */
  update(bytesDone: number, now = Date.now()): number {
    this.rate = this.meter.sample(bytesDone, now);
    const minInterval = this.opts.minIntervalMs ?? 3000;
    const minBytes = (this.opts.minStep ?? 0.04) * this.opts.bytesTotal;
    if (!this.sending && now - this.lastSentAt >= minInterval && bytesDone - this.lastSentBytes >= minBytes && this.rate > 0) {
      this.lastSentAt = now;
      this.lastSentBytes = bytesDone;
      const report: DiskProgressReport = {
        diskIndex: this.opts.diskIndex,
        bytesDone,
        bytesPerSecond: this.bytesPerSecond,
        transport: this.opts.transport,
        at: now,
      };
      this.sending = true;
      // Progress is for display: a failed signal costs a stale row, never the disk write.
      this.send(report)
        .catch(() => undefined)
        .finally(() => (this.sending = false));
    }
    return this.rate;
  }
}

/** Signals the workflow that scheduled the activity of this context. */
function signalWorkflowOf(ctx: Context): (report: DiskProgressReport) => Promise<void> {
  const execution = ctx.info.workflowExecution;
  if (!execution) return async () => {};
  const { workflowId, runId } = execution;
  // Async, so a context without a client (a test environment) rejects instead of throwing in a timer.
  return async (report) => ctx.client.workflow.getHandle(workflowId, runId).signal(diskProgressSignal, report);
}
