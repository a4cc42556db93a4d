import { ApplicationFailure } from '@temporalio/activity';
import { redactSasInText } from '../azure/blob-url';
import { FailureType, RestoreError } from '../domain/errors';
import { VSphereNotFoundError } from '../vsphere/errors';

/**
 * Removes SAS tokens from an error's message and stack, down its cause chain: SDK errors (say a storage
 * RestError) may quote the request URL, and failures are stored in history and logged by the worker.
 */
export function redactError<E>(err: E, depth = 0): E {
  if (!(err instanceof Error) || depth > 8) return err;
  const message = redactSasInText(err.message);
  if (message !== err.message) err.message = message;
  if (err.stack) {
    const stack = redactSasInText(err.stack);
    if (stack !== err.stack) err.stack = stack;
  }
  if (err.cause !== undefined) redactError(err.cause, depth + 1);
  return err;
}

/**
 * Turns our typed errors into Temporal failures the workflow can match on by type; a vSphere lookup that
 * found nothing is the domain's NotFound, which no retry fixes.
 */
export function toFailure(err: unknown): unknown {
  if (err instanceof VSphereNotFoundError) {
    return ApplicationFailure.create({ message: err.message, type: FailureType.NotFound, nonRetryable: true });
  }
  if (err instanceof RestoreError) {
    return ApplicationFailure.create({ message: redactSasInText(err.message), type: err.type, nonRetryable: err.nonRetryable });
  }
  return redactError(err);
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
