import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Sleeps `ms`, or rejects as soon as `signal` aborts, with the signal's own reason (an activity's
 * cancellation, say) rather than the generic AbortError of Node's timer.
 */
export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return sleep(ms, undefined, { signal }).catch((err: unknown) => {
    throw signal?.aborted ? signal.reason : err;
  });
}
