import { existsSync } from 'node:fs';
import { FailureType, RestoreError } from '../domain/errors';
import type { DiskCheckpoint, TransportMode } from '../domain/vsphere';
import { countedBlocks } from '../telemetry/metrics';
import { parseDatastorePath } from '../vsphere';
import { writeDiskToFile } from './disk-writer';
import { pathInside } from './paths';
import type { DiskWriteJob, DiskWriteOutcome } from './transport';

/** Where the proxy sees the disk's flat extent under its mount of the datastore (NFS). */
export function localTargetPath(job: DiskWriteJob, mode: TransportMode, mounts: Record<string, string> | undefined): string {
  const { datastore, path: rel } = parseDatastorePath(job.flatPath);
  const root = mounts?.[datastore];
  if (!root || !existsSync(root)) {
    throw new RestoreError(
      FailureType.TransportUnavailable,
      `${mode}: proxy '${job.proxy.name}' cannot reach datastore '${datastore}' (path ${root ?? 'not configured'})`,
    );
  }
  return pathInside(root, rel, `${mode} target of proxy '${job.proxy.name}' on datastore '${datastore}'`);
}

/**
 * The hot path of the file modes: repository blocks read (each verified against its hash), then written
 * at their offsets into `target` (the flat extent on the proxy's NFS mount, or the hot-added disk's
 * device), resuming from the last durable checkpoint.
 */
export async function writeToLocalTarget(job: DiskWriteJob, mode: TransportMode, target: string): Promise<DiskWriteOutcome> {
  const { disk, previous: prev } = job;
  const diskIndex = disk.diskIndex;
  if (!existsSync(target)) {
    throw new RestoreError(
      FailureType.TransportUnavailable,
      `${mode}: the disk's flat extent ${target} is not visible to proxy '${job.proxy.name}'`,
    );
  }
  const resumeFrom = prev && prev.transport === mode ? prev.offset : 0;
  let last: DiskCheckpoint = { diskIndex, offset: resumeFrom, bytes: prev?.bytes ?? 0, transport: mode };
  const beat = setInterval(() => {
    last.bytesPerSecond = Math.round(job.rate(last.offset));
    job.heartbeat(last);
  }, 1000);
  try {
    const progress = await writeDiskToFile({
      targetPath: target,
      capacityBytes: disk.capacityBytes,
      blocks: countedBlocks(
        job.repository.readDiskBlocks(job.restorePoint, diskIndex, {
          fromOffset: resumeFrom,
          concurrency: job.readConcurrency,
          signal: job.signal,
        }),
        job.counted,
      ),
      checkpointBytes: job.checkpointBytes,
      throttleBytesPerSecond: job.throttleBytesPerSecond,
      // A freshly created virtual disk reads as zeros, so zero blocks are left as holes.
      targetIsZeroed: true,
      signal: job.signal,
      onCheckpoint: (p) => {
        last = {
          diskIndex,
          offset: p.checkpointOffset,
          bytes: (prev?.bytes ?? 0) + p.bytesWritten,
          transport: mode,
          bytesPerSecond: Math.round(job.rate(p.checkpointOffset)),
        };
        job.heartbeat(last);
      },
    });
    return {
      resumedFromOffset: resumeFrom,
      bytesWritten: progress.bytesWritten,
      bytesSkippedZero: progress.bytesSkippedZero,
      writtenVia: target,
    };
  } finally {
    clearInterval(beat);
  }
}
