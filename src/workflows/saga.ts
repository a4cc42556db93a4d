import { CancellationScope, log } from '@temporalio/workflow';

/** A registered compensation; pass it to {@link Saga.remove} once the normal path has undone it itself. */
export interface Compensation {
  readonly name: string;
  readonly undo: () => Promise<unknown>;
}

/**
 * The undo list of a restore: compensations are added as the steps they undo begin, and run newest
 * first. A failed compensation is logged and the rest still run, since the caller needs the restore's
 * own failure; they run in a non-cancellable scope, so a cancelled restore still cleans up.
 */
export class Saga {
  private readonly steps: Compensation[] = [];

  /** Registers `undo`, named for the log (`delete VM 'web01'`); the newest runs first. */
  add(name: string, undo: () => Promise<unknown>): Compensation {
    const step = { name, undo };
    this.steps.push(step);
    return step;
  }

  /** Forgets a compensation the workflow no longer needs (its step was undone or released already). */
  remove(step: Compensation): void {
    const i = this.steps.indexOf(step);
    if (i >= 0) this.steps.splice(i, 1);
  }

  get size(): number {
    return this.steps.length;
  }

  /** Runs every compensation still registered, newest first, each failure logged; never throws. */
  async compensate(): Promise<void> {
    const steps = [...this.steps].reverse();
    await CancellationScope.nonCancellable(async () => {
      for (const step of steps) {
        try {
          await step.undo();
        } catch (err) {
          logUndoFailure(step.name, err);
        }
      }
    });
  }
}

/** Logs a failed undo (in the worker's log, not in history): the restore's own failure is what it reports. */
export function logUndoFailure(name: string, err: unknown): void {
  log.warn(`compensation '${name}' failed`, { error: err instanceof Error ? err.message : String(err) });
}

/**
 * Runs transfers together: the first failure cancels the others, and every one has settled (cancelled
 * transfers wait for their activity to stop) before that failure is rethrown, so compensation never
 * deletes a disk or blob under a transfer that is still writing it.
 */
export async function allOrNone(tasks: (() => Promise<void>)[]): Promise<void> {
  let failed = false;
  let first: unknown;
  const scope = new CancellationScope();
  await scope.run(() =>
    Promise.all(
      tasks.map((task) =>
        task().catch((err: unknown) => {
          if (!failed) [failed, first] = [true, err];
          scope.cancel();
        }),
      ),
    ),
  );
  if (failed) throw first;
}
