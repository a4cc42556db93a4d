import { existsSync } from 'node:fs';
import { Context } from '@temporalio/activity';
import type { ProxyConfig } from '../../config';
import { FailureType, RestoreError } from '../../domain/errors';
import type { DiskCheckpoint, DiskWriteResult, TransportMode, VSpherePlan } from '../../domain/vsphere';
import { readDiskBlocks } from '../../repository';
import { countedBlocks, restoredBytes } from '../../telemetry/metrics';
import { writeDiskToFile } from '../../transport/disk-writer';
import { pathInside } from '../../transport/paths';
import { ByteRateLimiter } from '../../transport/throttle';
import { flatFileName, parseDatastorePath, uploadDatastoreFile } from '../../vsphere';
import { DiskProgressReporter } from '../progress-report';
import { invalid, type VSphereContext } from './context';

function localTargetPath(plan: VSpherePlan, proxy: ProxyConfig, mode: TransportMode, flatDatastorePath: string): string {
  const { datastore, path: rel } = parseDatastorePath(flatDatastorePath);
  const mounts = mode === 'direct-san' ? proxy.sanMounts : mode === 'direct-nas' ? proxy.nasMounts : proxy.hotaddDevices;
  const root = mounts?.[datastore];
  if (!root || !existsSync(root)) {
    throw new RestoreError(
      FailureType.TransportUnavailable,
      `${mode}: proxy '${proxy.name}' cannot reach datastore '${datastore}' (path ${root ?? 'not configured'})`,
    );
  }
  void plan;
  return pathInside(root, rel, `${mode} target of proxy '${proxy.name}' on datastore '${datastore}'`);
}

/** Seed step 4, disk data transport: one disk written on the proxy by the transport the plan chose. */
export function createWriteDiskActivities(ctx: VSphereContext) {
  const { config, sessions, loadRestorePoint, proxyByName, proxyVm } = ctx;
  return {
    /** Streams one disk from the repository to the datastore; resumes from the last heartbeat. */
    async writeDisk(args: {
      plan: VSpherePlan;
      vmRef: string;
      diskIndex: number;
      diskFile: string;
      transport: TransportMode;
    }): Promise<DiskWriteResult> {
      const { plan, diskIndex, diskFile, transport } = args;
      const ctx = Context.current();
      const started = Date.now();
      const disk = plan.disks.find((d) => d.diskIndex === diskIndex);
      if (!disk) invalid(`disk ${diskIndex} is not in the plan`);
      const rp = await loadRestorePoint(plan.restorePointId);
      const proxy = proxyByName(plan.proxy);
      const flatPath = flatFileName(diskFile);
      const prev = ctx.info.heartbeatDetails as DiskCheckpoint | undefined;
      const signal = ctx.cancellationSignal;
      const throttle = plan.throttleMBps > 0 ? plan.throttleMBps * 1_000_000 : 0;
      const result = (resumedFromOffset: number, bytesWritten: number, bytesSkippedZero: number): DiskWriteResult => ({
        diskIndex,
        transport,
        bytesWritten,
        bytesSkippedZero,
        datastorePath: diskFile,
        flatPath,
        resumedFromOffset,
        seconds: (Date.now() - started) / 1000,
      });

      if (transport === 'nbd') {
        // The datastore file API replaces the whole file per PUT, so a retry starts from offset 0.
        const client = await sessions.get(plan.profile);
        const { datastore, path: rel } = parseDatastorePath(flatPath);
        let sent = 0;
        const limiter = new ByteRateLimiter(throttle);
        const zero = Buffer.alloc(rp.blockSize);
        const reporter = new DiskProgressReporter({ diskIndex, bytesTotal: disk.capacityBytes, transport });
        const beat = setInterval(() => {
          const bytesPerSecond = Math.round(reporter.update(sent));
          ctx.heartbeat({ diskIndex, offset: 0, bytes: sent, transport, bytesPerSecond } satisfies DiskCheckpoint);
        }, 1000);
        try {
          async function* body() {
            for await (const b of readDiskBlocks(config.repository.path, rp, diskIndex, {
              concurrency: config.restore.readConcurrency,
              signal,
            })) {
              const data = b.data ?? zero.subarray(0, b.length);
              await limiter.take(b.length, signal);
              sent += b.length;
              restoredBytes.inc({ target: 'vsphere', transport }, b.length);
              yield data;
            }
          }
          await uploadDatastoreFile(client, {
            datacenter: plan.datacenter,
            datastore,
            path: rel,
            size: disk.capacityBytes,
            body: body(),
            signal,
          });
        } finally {
          clearInterval(beat);
        }
        return result(0, sent, 0);
      }

      const target = localTargetPath(plan, proxy, transport, flatPath);
      if (transport === 'hotadd') {
        const client = await sessions.get(plan.profile);
        const attached = await (await proxyVm(client, plan)).attachedDiskFiles();
        if (!attached.includes(diskFile)) {
          throw new RestoreError(
            FailureType.TransportUnavailable,
            `hotadd: disk ${diskFile} is not attached to proxy VM '${plan.proxyVmName}'`,
          );
        }
      }
      if (!existsSync(target)) {
        throw new RestoreError(
          FailureType.TransportUnavailable,
          `${transport}: the disk's flat extent ${target} is not visible to proxy '${proxy.name}'`,
        );
      }
      const resumeFrom = prev && prev.transport === transport ? prev.offset : 0;
      let last: DiskCheckpoint = { diskIndex, offset: resumeFrom, bytes: prev?.bytes ?? 0, transport };
      const reporter = new DiskProgressReporter({ diskIndex, bytesTotal: disk.capacityBytes, transport });
      const beat = setInterval(() => {
        last.bytesPerSecond = Math.round(reporter.update(last.offset));
        ctx.heartbeat(last);
      }, 1000);
      try {
        const progress = await writeDiskToFile({
          targetPath: target,
          capacityBytes: disk.capacityBytes,
          blocks: countedBlocks(
            readDiskBlocks(config.repository.path, rp, diskIndex, {
              fromOffset: resumeFrom,
              concurrency: config.restore.readConcurrency,
              signal,
            }),
            (n) => restoredBytes.inc({ target: 'vsphere', transport }, n),
          ),
          checkpointBytes: config.restore.checkpointBytes,
          throttleBytesPerSecond: throttle,
          // A freshly created virtual disk reads as zeros, so zero blocks are left as holes.
          targetIsZeroed: true,
          signal,
          onCheckpoint: (p) => {
            last = {
              diskIndex,
              offset: p.checkpointOffset,
              bytes: (prev?.bytes ?? 0) + p.bytesWritten,
              transport,
              bytesPerSecond: Math.round(reporter.update(p.checkpointOffset)),
            };
            ctx.heartbeat(last);
          },
        });
        return result(resumeFrom, progress.bytesWritten, progress.bytesSkippedZero);
      } finally {
        clearInterval(beat);
      }
    },
  };
}
