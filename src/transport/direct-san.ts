import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { FailureType, RestoreError } from '../domain/errors';
import type { DiskCheckpoint } from '../domain/vsphere';
import type { RestorePoint } from '../repository';
import { countedBlocks } from '../telemetry/metrics';
import { parseDatastorePath } from '../vsphere';
import { lunRanges, SanHost } from './san-host';
import { ByteRateLimiter } from './throttle';
import type { DiskTransport, DiskWriteJob, DiskWriteOutcome } from './transport';
import { notConfigured, thinBlocksDirect } from './transport';

/** Lazy-zeroed blocks are zeroed by the host ahead of the writes in runs of this size (one request each). */
const ZERO_AHEAD_BYTES = 64 * 1024 * 1024;

function unavailable(message: string): RestoreError {
  return new RestoreError(FailureType.TransportUnavailable, `direct-san: ${message}`);
}

/** The proxy's block device for the datastore's LUN; anything else (missing, a file) is no SAN access. */
function lunDevice(job: DiskWriteJob, datastore: string): string {
  const lun = job.proxy.sanLuns?.[datastore];
  if (!lun) throw unavailable(`proxy '${job.proxy.name}' has no LUN for datastore '${datastore}'`);
  let isBlock = false;
  try {
    isBlock = statSync(lun).isBlockDevice();
  } catch {
    throw unavailable(`proxy '${job.proxy.name}' does not see LUN ${lun} of datastore '${datastore}'`);
  }
  if (!isBlock) throw unavailable(`${lun} (LUN of datastore '${datastore}' on proxy '${job.proxy.name}') is not a block device`);
  return lun;
}

async function writeFully(fh: FileHandle, buf: Buffer, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}

/**
 * End of the run of non-zero blocks from `at` on (at most ZERO_AHEAD_BYTES): what the host zeroes ahead
 * of the writes in one request. Zero blocks are never written, so their lazy-zeroed blocks stay unwritten.
 */
function dataRunEnd(rp: RestorePoint, diskIndex: number, at: number): number {
  const disk = rp.disks.find((d) => d.index === diskIndex)!;
  let i = Math.floor(at / rp.blockSize);
  const limit = at + ZERO_AHEAD_BYTES;
  while (i < disk.blocks.length && disk.blocks[i] !== null && (i + 1) * rp.blockSize <= limit) i++;
  return Math.min(Math.max(i * rp.blockSize, at + 1), disk.capacityBytes);
}

/**
 * Direct SAN access: the proxy writes the disk's blocks to the datastore's LUN itself, at the physical
 * offsets of the flat extent's block map, which the host serves (VMFS metadata). Thick disks only: a
 * thin disk has no blocks on the LUN to write to. Lazy-zeroed blocks are zeroed by the host before their
 * first write. Once written and flushed, the host drops its cached view of the file.
 */
export const directSan: DiskTransport = {
  mode: 'direct-san',
  needs: "the datastore's LUN as a block device on the proxy (sanLuns), and thick disks",
  cannot: (proxy, datastore, anyThin) =>
    notConfigured(proxy, 'direct-san') ??
    thinBlocksDirect('direct-san', anyThin) ??
    (proxy.sanLuns?.[datastore] ? undefined : `proxy '${proxy.name}' has no SAN access to datastore '${datastore}'`),
  async write(job): Promise<DiskWriteOutcome> {
    const { disk, previous: prev, signal } = job;
    const { datastore, path: rel } = parseDatastorePath(job.flatPath);
    const lun = lunDevice(job, datastore);
    const host = new SanHost(await job.session(), datastore, rel);
    const map = await host.blockMap(signal);
    if (!lunRanges(map, 0, disk.capacityBytes)) {
      throw unavailable(
        `${job.flatPath} is not allocated on the LUN over its ${disk.capacityBytes} bytes (a thin disk?); direct SAN writes thick disks only`,
      );
    }
    const resumeFrom = prev && prev.transport === 'direct-san' ? prev.offset : 0;
    // Blocks of the LUN this proxy cached earlier may be stale: the host reuses freed blocks.
    spawnSync('blockdev', ['--flushbufs', lun]);
    const limiter = new ByteRateLimiter(job.throttleBytesPerSecond);
    let last: DiskCheckpoint = { diskIndex: disk.diskIndex, offset: resumeFrom, bytes: prev?.bytes ?? 0, transport: 'direct-san' };
    const beat = setInterval(() => {
      last.bytesPerSecond = Math.round(job.rate(last.offset));
      job.heartbeat(last);
    }, 1000);
    const fh = await open(lun, 'r+');
    let bytesWritten = 0;
    let bytesSkippedZero = 0;
    let zeroedFrom = 0;
    let zeroedTo = 0;
    try {
      let sinceCheckpoint = 0;
      let first = true;
      const blocks = job.repository.readDiskBlocks(job.restorePoint, disk.diskIndex, {
        fromOffset: resumeFrom,
        concurrency: job.readConcurrency,
        signal,
      });
      for await (const block of countedBlocks(blocks, job.counted)) {
        signal.throwIfAborted();
        if (first) {
          last = { ...last, offset: block.offset };
          first = false;
        }
        if (!block.data) {
          // Lazy-zeroed blocks read as zeros, and eager-zeroed ones are zeros: nothing to write.
          bytesSkippedZero += block.length;
          if (sinceCheckpoint === 0) last = { ...last, offset: block.offset + block.length };
          continue;
        }
        await limiter.take(block.length, signal);
        for (const r of lunRanges(map, block.offset, block.length)!) {
          if (r.unwritten && (r.logical < zeroedFrom || r.logical + r.length > zeroedTo)) {
            zeroedFrom = r.logical;
            zeroedTo = Math.max(r.logical + r.length, dataRunEnd(job.restorePoint, disk.diskIndex, r.logical));
            await host.zero(zeroedFrom, zeroedTo - zeroedFrom, signal);
          }
          const at = r.logical - block.offset;
          await writeFully(fh, block.data.subarray(at, at + r.length), r.physical);
        }
        bytesWritten += block.length;
        sinceCheckpoint += block.length;
        if (sinceCheckpoint >= job.checkpointBytes) {
          await fh.datasync();
          sinceCheckpoint = 0;
          last = {
            diskIndex: disk.diskIndex,
            offset: block.offset + block.length,
            bytes: (prev?.bytes ?? 0) + bytesWritten,
            transport: 'direct-san',
            bytesPerSecond: Math.round(job.rate(block.offset + block.length)),
          };
          job.heartbeat(last);
        }
      }
      await fh.datasync();
    } finally {
      clearInterval(beat);
      await fh.close();
    }
    // The host read (and cached) the file before the LUN was written under it.
    await host.release(signal);
    job.heartbeat({ ...last, offset: disk.capacityBytes, bytes: (prev?.bytes ?? 0) + bytesWritten });
    return { resumedFromOffset: resumeFrom, bytesWritten, bytesSkippedZero, writtenVia: lun };
  },
};
