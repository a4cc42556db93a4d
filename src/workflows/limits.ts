import { CancellationScope, proxyActivities } from '@temporalio/workflow';
import type { AzureActivities } from '../activities/azure';
import type { LeaseTarget } from '../domain/lease';
import { controlOptions, leaseWaitOptions } from './activity-options';

/** A limit to hold: a limit lease and the capacity this restore accepts on it. */
export interface HeldLimit {
  target: LeaseTarget;
  capacity: number;
}

// An acquire waits while other holders use the limit's slots: long, but heartbeating.
const waiting = proxyActivities<AzureActivities>(leaseWaitOptions());
const control = proxyActivities<AzureActivities>(controlOptions('lease'));

/**
 * Takes one slot of each limit, in the order given (callers pass a fixed order, so two holders never wait
 * on each other), and returns the release. A holder whose workflow closes without releasing is dropped by
 * the lease's holder check, so a crashed or terminated restore frees its slots.
 */
export async function acquireLimits(limits: HeldLimit[], holder: string): Promise<() => Promise<void>> {
  const held: LeaseTarget[] = [];
  const release = async (): Promise<void> => {
    await CancellationScope.nonCancellable(async () => {
      for (const target of held.splice(0).reverse()) await control.releaseLeaseActivity({ target, holder });
    });
  };
  try {
    for (const { target, capacity } of limits) {
      // Counted as held before the acquire returns: a cancel during the wait still releases the slot.
      held.push(target);
      await waiting.acquireLeaseActivity({ target, holder, request: { slots: 1, capacity, powerOn: false } });
    }
  } catch (err) {
    await release();
    throw err;
  }
  return release;
}

/** Runs `fn` holding one slot of each limit; without limits it just runs `fn`. */
export async function withLimits<T>(limits: HeldLimit[], holder: string, fn: () => Promise<T>): Promise<T> {
  if (limits.length === 0) return fn();
  const release = await acquireLimits(limits, holder);
  try {
    return await fn();
  } finally {
    await release();
  }
}
