import { ScheduleAlreadyRunning, ScheduleOverlapPolicy, type Client } from '@temporalio/client';
import { randomBytes } from 'node:crypto';
import { sweepScheduleId, type SweepItem, type SweepReport } from '../domain/sweep';

/** Runs the sweeper workflow once on `taskQueue` (a worker must serve it) and returns its report. */
export async function runSweep(
  client: Client,
  taskQueue: string,
  opts: { dryRun?: boolean; includeOrphans?: boolean } = {},
): Promise<SweepReport> {
  return client.workflow.execute('sweepRestores', {
    taskQueue,
    workflowId: `vmrestore-sweep-${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`,
    args: [{ dryRun: opts.dryRun ?? false, includeOrphans: opts.includeOrphans ?? false }],
    staticSummary: opts.dryRun
      ? 'sweep (dry run): list what closed restores left behind'
      : 'sweep: remove what closed restores left behind',
  }) as Promise<SweepReport>;
}

/** Creates (or updates) the schedule that runs the sweeper every `everyMinutes` on `taskQueue`. */
export async function installSweepSchedule(client: Client, taskQueue: string, everyMinutes: number): Promise<string> {
  const scheduleId = sweepScheduleId(taskQueue);
  const action = {
    type: 'startWorkflow' as const,
    workflowType: 'sweepRestores',
    workflowId: `${scheduleId}-run`,
    args: [{}],
    taskQueue,
  };
  const spec = { intervals: [{ every: `${everyMinutes}m` as const }] };
  try {
    await client.schedule.create({ scheduleId, spec, action, policies: { overlap: ScheduleOverlapPolicy.SKIP } });
  } catch (err) {
    if (!(err instanceof ScheduleAlreadyRunning)) throw err;
    await client.schedule.getHandle(scheduleId).update((prev) => ({ ...prev, spec, action }));
  }
  return scheduleId;
}

export function formatSweepItem(i: SweepItem): string {
  const what = `${i.action.padEnd(12)} ${i.kind.padEnd(17)} ${i.name}  (restore ${i.restoreId}, ${i.restoreState})`;
  return i.error ? `${what}: ${i.error}` : what;
}

export function formatSweepReport(r: SweepReport): string[] {
  const lines = r.items.map(formatSweepItem);
  const failed = r.items.filter((i) => i.action === 'failed').length;
  lines.push(
    `${r.dryRun ? 'would remove' : 'removed'} ${r.items.length - failed} item(s)${failed ? `, ${failed} failed` : ''}; ` +
      `kept ${r.kept} resource(s) of running, completed or kept restores (or with no workflow) (${r.seconds.toFixed(1)} s)`,
  );
  for (const e of r.errors) lines.push(`error: ${e}`);
  return lines;
}
