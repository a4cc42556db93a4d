import { ApplicationFailure, Context } from '@temporalio/activity';
import type { DiskCheckpoint, DiskWriteResult, TransportMode, VSpherePlan } from '../../domain/vsphere';
import { restoredBytes } from '../../telemetry/metrics';
import { TRANSPORTS } from '../../transport';
import { flatFileName } from '../../vsphere';
import { openRepository } from '../../repository';
import { DiskProgressReporter } from '../progress-report';
import { invalid, type VSphereContext } from './context';
import { toFailure } from '../failures';
import { fencedRepository, serverProbe, WriterFence } from './writer-fence';

/**
 * A failed write as the workflow sees it: the same failure, carrying the disk's last checkpoint as its
 * details, so that the workflow's own retry (on this proxy or another) continues from there.
 */
function withCheckpoint(err: unknown, checkpoint: DiskCheckpoint | undefined): unknown {
  const f = toFailure(err);
  if (!(f instanceof Error)) return f;
  const app = f instanceof ApplicationFailure ? f : undefined;
  return ApplicationFailure.create({
    message: f.message,
    type: (app ? app.type : f.name) ?? undefined,
    nonRetryable: app?.nonRetryable ?? false,
    details: checkpoint ? [checkpoint] : [],
    cause: app ? undefined : f,
  });
}

/** Seed step 4, disk data transport: one disk written on the proxy by the transport the plan chose. */
export function createWriteDiskActivities(ctx: VSphereContext) {
  const { config, sessions, loadRestorePoint, proxyByName, proxyVm, client } = ctx;
  return {
    /** Streams one disk from the repository to the datastore; resumes from the last heartbeat. */
    async writeDisk(args: {
      plan: VSpherePlan;
      vmRef: string;
      diskIndex: number;
      diskFile: string;
      transport: TransportMode;
      /** The last checkpoint of the disk on a proxy that was lost: where this proxy takes over. */
      previous?: DiskCheckpoint;
    }): Promise<DiskWriteResult> {
      const { plan, diskIndex, diskFile, transport } = args;
      const activity = Context.current();
      const started = Date.now();
      const disk = plan.disks.find((d) => d.diskIndex === diskIndex);
      if (!disk) invalid(`disk ${diskIndex} is not in the plan`);
      const restorePoint = await loadRestorePoint(plan.restorePointId);
      const flatPath = flatFileName(diskFile);
      const reporter = new DiskProgressReporter({ diskIndex, bytesTotal: disk.capacityBytes, transport });
      const from = (activity.info.heartbeatDetails as DiskCheckpoint | undefined) ?? args.previous;
      let last = from;
      // On a proxy: no block goes out once the server has been silent for half a heartbeat timeout.
      const { info } = activity;
      const hb = info.heartbeatTimeoutMs;
      const fence =
        client && hb && info.workflowExecution
          ? new WriterFence(
              serverProbe(client, { ...info, workflowExecution: info.workflowExecution }),
              Math.max(2000, hb / 2),
              Math.max(500, hb / 6),
            )
          : undefined;
      const repository = openRepository(config.repository);
      const outcome = await TRANSPORTS[transport]
        .write({
          datacenter: plan.datacenter,
          disk,
          diskFile,
          flatPath,
          proxy: proxyByName(plan.proxy),
          proxyVmName: plan.proxyVmName,
          repository: fence ? fencedRepository(repository, fence) : repository,
          restorePoint,
          readConcurrency: config.restore.readConcurrency,
          checkpointBytes: config.restore.checkpointBytes,
          throttleBytesPerSecond: plan.throttleMBps > 0 ? plan.throttleMBps * 1_000_000 : 0,
          previous: from,
          signal: activity.cancellationSignal,
          session: () => sessions.get(plan.profile),
          proxyVm: async () => proxyVm(await sessions.get(plan.profile), plan),
          heartbeat: (checkpoint) => {
            last = checkpoint;
            activity.heartbeat(checkpoint);
          },
          rate: (bytesDone) => reporter.update(bytesDone),
          counted: (bytes) => restoredBytes.inc({ target: 'vsphere', transport }, bytes),
        })
        .catch((err: unknown) => {
          throw activity.cancellationSignal.aborted ? err : withCheckpoint(err, last);
        })
        .finally(() => fence?.stop());
      return {
        diskIndex,
        transport,
        bytesWritten: outcome.bytesWritten,
        bytesSkippedZero: outcome.bytesSkippedZero,
        datastorePath: diskFile,
        flatPath,
        resumedFromOffset: outcome.resumedFromOffset,
        writtenVia: outcome.writtenVia,
        seconds: (Date.now() - started) / 1000,
      };
    },
  };
}
