import { ActivityCancellationType, type ActivityOptions, type RetryPolicy } from '@temporalio/workflow';
import { FailureType } from '../domain/errors';

/**
 * Activity option presets for every workflow, and the one list of failure types no retry can fix.
 *
 * Every preset heartbeats with a timeout of at most 30 s, so a worker that dies in any activity costs a
 * restore about one heartbeat timeout, never a whole start-to-close timeout. Control activities heartbeat
 * from the worker while they run (see `withHeartbeat` in src/activities/heartbeat.ts, which also beats
 * on every ARM or vSphere task poll); long-running ones heartbeat their checkpoints themselves.
 */

/** Failure types that no retry can fix: the request, the backup or the configuration is at fault. */
export const NON_RETRYABLE: string[] = [
  FailureType.InvalidRequest,
  FailureType.NotFound,
  FailureType.AlreadyExists,
  FailureType.InsufficientSpace,
  FailureType.RepositoryCorrupt,
  FailureType.RestorePointNotFound,
  FailureType.Configuration,
  FailureType.TransportUnavailable,
  FailureType.AzureFault,
  FailureType.AzureLimit,
  FailureType.GuestPreparation,
  FailureType.NoProxyAvailable,
];

/** How long a silent control activity may go before Temporal gives it to another worker. */
export const CONTROL_HEARTBEAT_TIMEOUT = '15 seconds';
/** The same for disk writes, uploads and guest preparation, which heartbeat every second. */
export const TRANSFER_HEARTBEAT_TIMEOUT = '10 seconds';

const retry = (maximumAttempts: number, extraNonRetryable: string[] = []): RetryPolicy => ({
  initialInterval: '1s',
  maximumInterval: '30s',
  maximumAttempts,
  nonRetryableErrorTypes: [...NON_RETRYABLE, ...extraNonRetryable],
});

/**
 * vSphere and ARM API calls: bounded by a heartbeat, with an outer limit for a call that heartbeats
 * but never returns. The Azure SDK pipeline already retries ARM's throttling and server faults, so an
 * `AzureTransient` that reaches the workflow is final for Azure control steps; uploads retry it.
 */
export function controlOptions(target: 'vsphere' | 'azure' | 'lease'): ActivityOptions {
  return {
    startToCloseTimeout: '30 minutes',
    heartbeatTimeout: CONTROL_HEARTBEAT_TIMEOUT,
    retry: target === 'azure' ? retry(8, [FailureType.AzureTransient]) : retry(target === 'vsphere' ? 5 : 10),
  };
}

/** A lease acquire may wait for other restores to free the appliance's slots: long, but heartbeating. */
export function leaseWaitOptions(): ActivityOptions {
  return { ...controlOptions('azure'), startToCloseTimeout: '24 hours' };
}

/**
 * Disk writes, VHD uploads and guest preparation: hours long, heartbeating a durable checkpoint, and
 * cancelled only once they have stopped (compensation must not delete a disk under a running writer).
 */
export function transferOptions(summary: string, where?: Pick<ActivityOptions, 'taskQueue' | 'scheduleToStartTimeout'>): ActivityOptions {
  return {
    ...where,
    startToCloseTimeout: '24 hours',
    heartbeatTimeout: TRANSFER_HEARTBEAT_TIMEOUT,
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: retry(10),
    summary,
  };
}

/**
 * Boot verification on the verifier's queue: minutes of emulation, heartbeating every 5 s. A worker that
 * dies mid-boot costs one heartbeat timeout and a new boot; a guest that does not boot is a report, not
 * an error, so retries cover only the reading and the worker.
 */
export function verifyOptions(summary: string, taskQueue: string): ActivityOptions {
  return {
    taskQueue,
    summary,
    // No verifier serving the queue fails the restore instead of parking it.
    scheduleToStartTimeout: '15 minutes',
    startToCloseTimeout: '2 hours',
    heartbeatTimeout: '30 seconds',
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: retry(3),
  };
}
