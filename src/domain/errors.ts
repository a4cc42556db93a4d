/**
 * Failure type names used as ApplicationFailure.type. Workflows and clients match on these,
 * so they are part of the public contract.
 */
export const FailureType = {
  InvalidRequest: 'InvalidRequest',
  NotFound: 'NotFound',
  AlreadyExists: 'AlreadyExists',
  InsufficientSpace: 'InsufficientSpace',
  TransportUnavailable: 'TransportUnavailable',
  RepositoryCorrupt: 'RepositoryCorrupt',
  /** The repository data mover did not answer (down, restarting, cut off): another attempt may succeed. */
  RepositoryUnavailable: 'RepositoryUnavailable',
  RestorePointNotFound: 'RestorePointNotFound',
  Configuration: 'Configuration',
  VSphereFault: 'VSphereFault',
  /** Azure (ARM or storage) refused the request or answered something unusable: another attempt fails too. */
  AzureFault: 'AzureFault',
  /** Azure throttled, timed out or failed on its side, or a read came back short: another attempt may succeed. */
  AzureTransient: 'AzureTransient',
  AzureLimit: 'AzureLimit',
  GuestPreparation: 'GuestPreparation',
  /** No proxy worker was live for longer than the restore's proxy wait. */
  NoProxyAvailable: 'NoProxyAvailable',
  /** A disk writer that lost the server found another attempt writing its disk, and stopped. */
  Superseded: 'Superseded',
} as const;
export type FailureType = (typeof FailureType)[keyof typeof FailureType];

/** Errors that carry a failure type; activities convert them to ApplicationFailure. */
export class RestoreError extends Error {
  constructor(
    readonly type: FailureType,
    message: string,
    readonly nonRetryable = true,
  ) {
    super(message);
    this.name = 'RestoreError';
  }
}

/** ARM and storage answers worth another attempt: no answer, a timeout, throttling, a fault on Azure's side. */
export function isTransientAzureStatus(status: number | undefined): boolean {
  const s = status ?? 0;
  return s === 0 || s === 408 || s === 429 || s >= 500;
}

/**
 * The failure of an Azure call: its type alone says whether a retry may help (see NON_RETRYABLE in
 * src/workflows/activity-options.ts), so the failure never overrides the workflow's retry policy.
 */
export function azureFailure(message: string, transient: boolean): RestoreError {
  return new RestoreError(transient ? FailureType.AzureTransient : FailureType.AzureFault, message, !transient);
}
