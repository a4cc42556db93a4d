import type { DiskCheckpoint } from '../domain/vsphere';
import { parseDatastorePath, uploadDatastoreFile } from '../vsphere';
import { ByteRateLimiter } from './throttle';
import type { DiskTransport } from './transport';
import { notConfigured } from './transport';

/**
 * Network mode: the disk's flat extent is sent through the host's datastore file API, which any proxy
 * can reach. The API replaces the whole file per PUT, so a retry starts from offset 0.
 */
export const nbd: DiskTransport = {
  mode: 'nbd',
  needs: 'HTTPS access to vCenter or the host (any proxy)',
  cannot: (proxy) => notConfigured(proxy, 'nbd'),
  async write(job) {
    const { disk, signal, restorePoint: rp } = job;
    const diskIndex = disk.diskIndex;
    const client = await job.session();
    const { datastore, path: rel } = parseDatastorePath(job.flatPath);
    let sent = 0;
    let writtenVia = '';
    const limiter = new ByteRateLimiter(job.throttleBytesPerSecond);
    const zero = Buffer.alloc(rp.blockSize);
    const beat = setInterval(() => {
      const bytesPerSecond = Math.round(job.rate(sent));
      job.heartbeat({ diskIndex, offset: 0, bytes: sent, transport: 'nbd', bytesPerSecond } satisfies DiskCheckpoint);
    }, 1000);
    try {
      async function* body() {
        for await (const b of job.repository.readDiskBlocks(rp, diskIndex, { concurrency: job.readConcurrency, signal })) {
          const data = b.data ?? zero.subarray(0, b.length);
          await limiter.take(b.length, signal);
          sent += b.length;
          job.counted(b.length);
          yield data;
        }
      }
      const { url } = await uploadDatastoreFile(client, {
        datacenter: job.datacenter,
        datastore,
        path: rel,
        size: disk.capacityBytes,
        body: body(),
        signal,
      });
      writtenVia = url.origin + url.pathname;
    } finally {
      clearInterval(beat);
    }
    return { resumedFromOffset: 0, bytesWritten: sent, bytesSkippedZero: 0, writtenVia };
  },
};
