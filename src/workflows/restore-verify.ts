import { ApplicationFailure, proxyActivities, upsertSearchAttributes, workflowInfo } from '@temporalio/workflow';
import type { VerifyActivities, VerifyBootInput } from '../activities/verify';
import { RestoreVerified } from '../domain/search-attributes';
import {
  VERIFICATION_FAILED,
  verifierTaskQueue,
  type RestoreVerification,
  type VerificationReport,
  type VerificationStatus,
} from '../domain/verification';
import { verifyOptions } from './activity-options';

/** Sets `RestoreVerified` for the Web UI and visibility queries. */
export function markVerification(status: VerificationStatus): void {
  upsertSearchAttributes([{ key: RestoreVerified, value: status }]);
}

function failedChecks(report: VerificationReport): string {
  const failed = report.checks.filter((c) => c.required && c.status !== 'passed');
  return failed.map((c) => `${c.name}: ${c.detail}`).join('; ') || report.whileUpError || `stopped by ${report.stoppedBy}`;
}

/**
 * The verification step of a restore: boots what the target holds on the verifier's queue and records
 * the verdict. A failed boot fails the restore (the caller compensates) unless `keep` is set, in which
 * case the restore goes on and its result says `failed`.
 */
export async function verifyRestoredBoot(input: VerifyBootInput, keep: boolean, what: string): Promise<RestoreVerification> {
  const verifier = proxyActivities<VerifyActivities>(
    verifyOptions(`boot ${what} in the verification lab`, verifierTaskQueue(workflowInfo().taskQueue)),
  );
  const report = await verifier.verifyBoot(input);
  markVerification(report.verdict);
  const verification: RestoreVerification = { status: report.verdict, report };
  if (report.verdict === 'passed') return verification;
  if (keep) return { ...verification, kept: true };
  throw ApplicationFailure.create({
    type: VERIFICATION_FAILED,
    message: `boot verification of ${what} failed: ${failedChecks(report)}`,
    nonRetryable: true,
    details: [verification],
  });
}
