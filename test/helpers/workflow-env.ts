import { defaultPayloadConverter } from '@temporalio/common';
import type { temporal } from '@temporalio/proto';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { bundleWorkflowCode, Worker, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { SEARCH_ATTRIBUTES } from '../../src/domain/search-attributes';
import { ensureTool, TEMPORAL_CLI } from '../../src/lab/binaries';
import { proxyTaskQueue } from '../../src/domain/task-queues';

/**
 * Workflow tests run on a Temporal dev server of their own, the lab's CLI binary started by the SDK's
 * TestWorkflowEnvironment. The SDK's time-skipping server is a binary it downloads at run time, which
 * this project cannot fetch, so the timers that matter (lease idle timeout, holder check) are inputs
 * and the tests set them to seconds.
 */
export interface WorkflowTestEnv {
  env: TestWorkflowEnvironment;
  bundle: WorkflowBundleWithSourceMap;
  /**
   * Runs `fn` while a worker on a fresh task queue serves the project's workflows with `activities`, and
   * one worker per entry of `proxies` serves that vSphere proxy's queue with its activities.
   */
  withWorker<R>(activities: object, fn: (taskQueue: string) => Promise<R>, proxies?: Record<string, object>): Promise<R>;
  teardown(): Promise<void>;
}

let queues = 0;

export async function startWorkflowTestEnv(extraArgs: string[] = []): Promise<WorkflowTestEnv> {
  const [env, bundle] = await Promise.all([
    TestWorkflowEnvironment.createLocal({
      server: {
        executable: { type: 'existing-path', path: ensureTool(TEMPORAL_CLI) },
        // The workflows set the project's search attributes, as on the lab's server.
        extraArgs: [...Object.entries(SEARCH_ATTRIBUTES).flatMap(([key, type]) => ['--search-attribute', `${key}=${type}`]), ...extraArgs],
      },
    }),
    bundleWorkflowCode({ workflowsPath: require.resolve('../../src/workflows'), logger: quietLogger }),
  ]);
  return {
    env,
    bundle,
    async withWorker(activities, fn, proxies = {}) {
      const taskQueue = `wf-test-${process.pid}-${++queues}`;
      const worker = await Worker.create({ connection: env.nativeConnection, taskQueue, workflowBundle: bundle, activities });
      const proxyWorkers = await Promise.all(
        Object.entries(proxies).map(([name, acts]) =>
          Worker.create({ connection: env.nativeConnection, taskQueue: proxyTaskQueue(taskQueue, name), activities: acts }),
        ),
      );
      const run = fn(taskQueue);
      const [result] = await Promise.all([worker.runUntil(run), ...proxyWorkers.map((w) => w.runUntil(run))]);
      return result;
    },
    teardown: () => env.teardown(),
  };
}

const quietLogger = {
  log: () => {},
  trace: () => {},
  debug: () => {},
  info: () => {},
  warn: (m: string) => process.stderr.write(`${m}\n`),
  error: (m: string) => process.stderr.write(`${m}\n`),
};

export type HistoryEvent = temporal.api.history.v1.IHistoryEvent;

/** An activity scheduled in a workflow's history: its type, decoded input and how it ended. */
export interface ScheduledActivity {
  eventId: number;
  type: string;
  input: unknown[];
  /** Event id of its ActivityTaskCompleted / Failed / TimedOut / Canceled, if it ended. */
  endedEventId?: number;
  outcome?: 'completed' | 'failed' | 'timed-out' | 'cancelled';
}

/** The activities of a history in the order the workflow scheduled them, read from the events. */
export function scheduledActivities(events: HistoryEvent[]): ScheduledActivity[] {
  const byId = new Map<number, ScheduledActivity>();
  const out: ScheduledActivity[] = [];
  for (const e of events) {
    const id = Number(e.eventId);
    const s = e.activityTaskScheduledEventAttributes;
    if (s) {
      const a: ScheduledActivity = {
        eventId: id,
        type: s.activityType?.name ?? '',
        input: (s.input?.payloads ?? []).map((p) => defaultPayloadConverter.fromPayload(p)),
      };
      byId.set(id, a);
      out.push(a);
    }
    const ends: Array<[ScheduledActivity['outcome'], { scheduledEventId?: unknown } | null | undefined]> = [
      ['completed', e.activityTaskCompletedEventAttributes],
      ['failed', e.activityTaskFailedEventAttributes],
      ['timed-out', e.activityTaskTimedOutEventAttributes],
      ['cancelled', e.activityTaskCanceledEventAttributes],
    ];
    for (const [outcome, attrs] of ends) {
      const a = attrs ? byId.get(Number(attrs.scheduledEventId)) : undefined;
      if (a) Object.assign(a, { endedEventId: id, outcome });
    }
  }
  return out;
}

/** Polls `probe` until it returns a value other than undefined, or fails naming `what` after `timeoutMs`. */
export async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The events of a workflow run's history. */
export async function historyEvents(handle: { fetchHistory(): Promise<{ events?: HistoryEvent[] | null }> }): Promise<HistoryEvent[]> {
  return (await handle.fetchHistory()).events ?? [];
}
