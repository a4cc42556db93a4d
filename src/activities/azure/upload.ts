/** Upload: one disk streamed from the repository into a fixed-VHD page blob, resumable, verified. */
import { Context } from '@temporalio/activity';
import { DiskProgressReporter } from '../progress-report';
import type { AzureDiskResult, AzurePlan, UploadCheckpoint } from '../../domain/azure';
import { FailureType, RestoreError } from '../../domain/errors';
import { openRepository } from '../../repository';
import { uploadFixedVhd } from '../../azure/pageblob';
import { verifyUploadedVhd } from '../../azure/pageblob-verify';
import { deltaCounter, uploadedBytes } from '../../telemetry/metrics';
import type { AzureContext } from './context';
import { invalid } from './arm-errors';

export function uploadActivities(c: AzureContext) {
  const { config, blobs } = c;
  return {
    /** Streams one disk into a fixed-VHD page blob; resumes from the last heartbeat. */
    async uploadVhd(args: { plan: AzurePlan; diskIndex: number }): Promise<AzureDiskResult> {
      const { plan, diskIndex } = args;
      const ctx = Context.current();
      const started = Date.now();
      const disk = plan.disks.find((d) => d.diskIndex === diskIndex);
      if (!disk) invalid(`disk ${diskIndex} is not in the plan`);
      const repository = openRepository(config.repository);
      const rp = await repository.getRestorePoint(plan.restorePointId);
      await blobs().createIfNotExists();
      const prev = ctx.info.heartbeatDetails as UploadCheckpoint | undefined;
      const resumeFrom = prev?.diskIndex === diskIndex ? prev.offset : 0;
      // A later attempt keeps the blob; the uploader may move further, to the checkpoint stored in the blob.
      const resuming = ctx.info.attempt > 1 || resumeFrom > 0;
      const blobClient = blobs().getPageBlobClient(disk.blobName);
      let last: UploadCheckpoint = { diskIndex, offset: resumeFrom, bytesSent: 0 };
      const countUploaded = deltaCounter((n) => uploadedBytes.inc({ target: 'azure', transport: 'page-blob' }, n));
      const reporter = new DiskProgressReporter({ diskIndex, bytesTotal: disk.capacityBytes });
      const beat = setInterval(() => {
        last.bytesPerSecond = Math.round(reporter.update(last.offset));
        ctx.heartbeat(last);
      }, 1000);
      try {
        const res = await uploadFixedVhd({
          blobClient,
          capacityBytes: disk.capacityBytes,
          blocks: (from) =>
            repository.readDiskBlocks(rp, diskIndex, {
              fromOffset: Math.min(from, disk.capacityBytes),
              concurrency: config.restore.readConcurrency,
              signal: ctx.cancellationSignal,
            }),
          restoreId: plan.restoreId,
          diskIndex,
          resumeFromOffset: resuming ? resumeFrom : undefined,
          footerTimestamp: new Date(Date.parse(rp.createdAt)),
          signal: ctx.cancellationSignal,
          onProgress: (p) => {
            countUploaded(p.bytesSent);
            last = {
              diskIndex,
              offset: p.contiguousOffset,
              bytesSent: p.bytesSent,
              bytesPerSecond: Math.round(reporter.update(p.contiguousOffset)),
            };
            ctx.heartbeat(last);
          },
        });
        countUploaded(res.bytesSent);
        const check = await verifyUploadedVhd(blobClient, { capacityBytes: disk.capacityBytes, signal: ctx.cancellationSignal });
        if (!check.ok)
          throw new RestoreError(
            FailureType.AzureTransient,
            `uploaded VHD ${disk.blobUrl} failed verification: ${check.problems.join('; ')}`,
            false,
          );
        return {
          diskIndex,
          blobUrl: disk.blobUrl,
          managedDiskId: disk.managedDiskId,
          bytesUploaded: res.bytesSent,
          zeroBytesSkipped: res.zeroBytesSkipped,
          resumedFromOffset: res.resumedFrom,
          seconds: (Date.now() - started) / 1000,
        };
      } finally {
        clearInterval(beat);
      }
    },
  };
}
