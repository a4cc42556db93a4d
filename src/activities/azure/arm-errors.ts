import { azureFailure, FailureType, isTransientAzureStatus, RestoreError } from '../../domain/errors';

export function invalid(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, message);
}

export function isNotFound(err: unknown): boolean {
  const e = err as { statusCode?: number; code?: string };
  return e?.statusCode === 404 || e?.code === 'ResourceNotFound' || e?.code === 'NotFound' || e?.code === 'BlobNotFound';
}

export function isPreconditionFailed(err: unknown): boolean {
  const e = err as { statusCode?: number; code?: string };
  return e?.statusCode === 412 || e?.code === 'PreconditionFailed';
}

/** ARM errors keep their code; 4xx other than throttling are the caller's to fix, so they are not retried. */
export function armFailure(what: string, err: unknown): never {
  const e = err as { statusCode?: number; code?: string; message?: string };
  throw azureFailure(`${what} failed: ${e?.code ? `${e.code}: ` : ''}${e?.message ?? String(err)}`, isTransientAzureStatus(e?.statusCode));
}
