import { Context } from '@temporalio/activity';
import { taskWaitContext } from '../vsphere/task';

/** Activities that heartbeat their own checkpoints: a bare heartbeat would overwrite those details. */
export const SELF_HEARTBEATING = ['writeDisk', 'uploadVhd', 'prepareGuestOnBackupServer', 'prepareGuestOnHelper', 'importVSphereDisk'];

/**
 * Wraps every function of an activity object (but `except`) so that it heartbeats from this worker
 * every `intervalMs` while it runs: through ARM long-running-operation polls and lease updates alike,
 * and on every poll of a vSphere task wait, which also stops waiting when the activity is cancelled. With a heartbeat timeout on the activity, a worker that dies mid-call is noticed
 * within that timeout and the activity retried elsewhere, instead of after its start-to-close timeout.
 * Heartbeats also let cancellation reach the activity. Outside an activity (unit tests) it calls through.
 */
export function withHeartbeat<T extends Record<string, (...args: never[]) => Promise<unknown>>>(
  acts: T,
  opts: { except?: string[]; intervalMs?: number } = {},
): T {
  const except = new Set(opts.except ?? SELF_HEARTBEATING);
  const intervalMs = opts.intervalMs ?? 2000;
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(acts)) {
    if (except.has(name)) {
      out[name] = fn;
      continue;
    }
    const wrapped = async (...args: never[]) => {
      let ctx: Context;
      try {
        ctx = Context.current();
      } catch {
        return fn(...args);
      }
      ctx.heartbeat();
      const beat = setInterval(() => ctx.heartbeat(), intervalMs);
      try {
        return await taskWaitContext.run({ beat: () => ctx.heartbeat(), signal: ctx.cancellationSignal }, () => fn(...args));
      } finally {
        clearInterval(beat);
      }
    };
    Object.defineProperty(wrapped, 'name', { value: name });
    out[name] = wrapped;
  }
  return out as T;
}
