import { ApplicationFailure } from '@temporalio/activity';
import { RestoreError } from '../domain/errors';

/** Turns our typed errors into Temporal failures the workflow can match on by type. */
export function toFailure(err: unknown): unknown {
  if (err instanceof RestoreError) {
    return ApplicationFailure.create({ message: err.message, type: err.type, nonRetryable: err.nonRetryable });
  }
  return err;
}

/** Wraps every function of an activity object so that RestoreErrors cross the wire typed. */
export function withFailureMapping<T extends Record<string, (...args: never[]) => Promise<unknown>>>(acts: T): T {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(acts)) {
    const wrapped = async (...args: never[]) => {
      try {
        return await fn(...args);
      } catch (err) {
        throw toFailure(err);
      }
    };
    Object.defineProperty(wrapped, 'name', { value: name });
    out[name] = wrapped;
  }
  return out as T;
}
