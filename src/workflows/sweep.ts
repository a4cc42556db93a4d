import { proxyActivities } from '@temporalio/workflow';
import type { SweepActivities } from '../activities/sweep';
import type { SweepReport, SweepRequest } from '../domain/sweep';

const sweeper = proxyActivities<SweepActivities>({
  startToCloseTimeout: '2 hours',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '5s', maximumInterval: '1 minute', maximumAttempts: 3 },
  summary: 'find and remove what closed restores left behind',
});

/**
 * Removes what restores that closed without completing left behind (run by the sweeper schedule and
 * by `vmrestore sweep`): tagged VMs, snapshots, NICs, managed disks, VHD blobs and HotAdd or helper
 * attachments whose restore workflow was terminated, timed out, failed or no longer exists.
 */
export async function sweepRestores(req: SweepRequest = {}): Promise<SweepReport> {
  return sweeper.sweepLeftovers(req);
}
