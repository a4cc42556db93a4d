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
  RestorePointNotFound: 'RestorePointNotFound',
  Configuration: 'Configuration',
  VSphereFault: 'VSphereFault',
  AzureFault: 'AzureFault',
  AzureLimit: 'AzureLimit',
  GuestPreparation: 'GuestPreparation',
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
