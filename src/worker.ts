import { hostname } from 'node:os';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { startWorkerTelemetry } from './telemetry/worker';
import { azureProxyQueues, createMappedAzureActivities } from './activities/azure';
import { helperTaskQueue, insecureWarnings, type AppConfig } from './config';
import { createMappedVSphereActivities } from './activities/vsphere';
import { createMappedVSphereImportActivities } from './activities/vsphere-import';
import { VSphereSessions } from './activities/vsphere/sessions';
import { withFailureMapping } from './activities/failures';
import { withHeartbeat } from './activities/heartbeat';
import { createSweepActivities } from './activities/sweep';
import { createPlanActivities } from './activities/plan';
import { createMappedVerifyActivities } from './activities/verify';
import { verifierTaskQueue } from './domain/verification';
import { dataConverterFor } from './client/restore';
import { workflowCode } from './workflow-bundle';

export interface RunWorkerOptions {
  config: AppConfig;
  taskQueue?: string;
  log?: (line: string) => void;
  /** Resolves when the worker should stop. */
  until?: Promise<unknown>;
  /**
   * Serve only the helper-appliance queue of this location (what runs inside a helper appliance),
   * instead of the main queue plus the helper queues configured as embedded.
   */
  helperLocation?: string;
  /** Serve only the upload queue of this Azure proxy (what runs inside the proxy VM). */
  azureProxy?: string;
  /**
   * Serve only the boot verification queue (`<queue>-verifier`): what runs on a machine with qemu. The
   * main worker serves it too when `verifier.embeddedWorker` is set (the lab).
   */
  verifier?: boolean;
  /** host:port where this worker serves Prometheus metrics (ours and the Temporal SDK's) at /metrics. */
  metrics?: string;
}

/** Helper-appliance queues this worker serves: one location's, or every embedded one. */
function helperQueues(config: AppConfig, only?: string): { location: string; taskQueue: string }[] {
  const helpers = config.azure?.helpers ?? {};
  if (only !== undefined && !helpers[only]) {
    throw new Error(`no helper appliance is configured for location '${only}' (known: ${Object.keys(helpers).join(', ') || 'none'})`);
  }
  return Object.entries(helpers)
    .filter(([location, h]) => (only === undefined ? h.embeddedWorker : location === only))
    .map(([location, h]) => ({ location, taskQueue: helperTaskQueue(config, location, h) }));
}

/** Builds the activity dependencies from config and runs a worker until told to stop. */
export async function runWorker(opts: RunWorkerOptions): Promise<void> {
  const { config } = opts;
  const log = opts.log ?? (() => {});
  for (const w of insecureWarnings(config)) log(w);
  // Before the first connection: the SDK's runtime takes its metrics exporter when it is created.
  const telemetry = await startWorkerTelemetry({ config, metrics: opts.metrics, log });
  const connection = await NativeConnection.connect({ address: config.temporal.address });
  const sessions = new VSphereSessions(config);
  // Lease activities talk to lease workflows through a regular client.
  const clientConnection = await Connection.connect({ address: config.temporal.address });
  const dataConverter = dataConverterFor(config);
  const client = new Client({
    connection: clientConnection,
    namespace: config.temporal.namespace,
    dataConverter,
    interceptors: { workflow: telemetry.clientInterceptors },
  });
  const taskQueue = opts.taskQueue ?? config.temporal.taskQueue;
  try {
    // Everything this worker derives from config (lease ids, helper queues) follows the queue it serves.
    const served: AppConfig = { ...config, temporal: { ...config.temporal, taskQueue } };
    // Guest preparation on the helper runs only inside the helper appliance, so only its worker registers it.
    const { prepareGuestOnHelper, ...azureActivities } = createMappedAzureActivities({ config: served, client });
    const common = {
      connection,
      namespace: config.temporal.namespace,
      dataConverter,
      // Checkpoints reach the server within a second, which bounds re-written bytes after a crash.
      maxHeartbeatThrottleInterval: '1 second',
      defaultHeartbeatThrottleInterval: '1 second',
      // Lets a disk writer record its last checkpoint before the process exits.
      shutdownGraceTime: '5 seconds',
      ...telemetry.workerOptions,
    } as const;
    const workers: Worker[] = [];
    if (opts.helperLocation !== undefined && opts.verifier) throw new Error('a worker is either --helper or --verifier, not both');
    if (opts.azureProxy !== undefined && (opts.helperLocation !== undefined || opts.verifier))
      throw new Error('a worker is --azure-proxy alone, not with --helper or --verifier');
    if (opts.helperLocation === undefined && !opts.verifier && opts.azureProxy === undefined) {
      telemetry.watchLeases(client, taskQueue);
      workers.push(
        await Worker.create({
          ...common,
          taskQueue,
          ...(await workflowCode(require.resolve('./workflows'), { ...telemetry.workerOptions, dataConverter })),
          // Control activities heartbeat while they run, so a dead worker costs one heartbeat timeout.
          activities: withHeartbeat({
            ...createMappedVSphereActivities({ config, sessions }),
            ...createMappedVSphereImportActivities({ config, sessions }),
            ...azureActivities,
            ...withFailureMapping(createSweepActivities({ config: served, client, sessions })),
            ...withFailureMapping(createPlanActivities({ client })),
          }),
        }),
      );
      log(`worker polling task queue '${taskQueue}' on ${config.temporal.address} (namespace ${config.temporal.namespace})`);
    }
    // A helper appliance's worker prepares the disks attached to it, and does nothing else.
    for (const h of opts.verifier || opts.azureProxy !== undefined ? [] : helperQueues(served, opts.helperLocation)) {
      workers.push(
        await Worker.create({
          ...common,
          taskQueue: h.taskQueue,
          identity: `${process.pid}@${hostname()}/vmrestore-helper-${h.location}`,
          activities: { prepareGuestOnHelper },
        }),
      );
      log(`helper appliance worker (${h.location}) polling task queue '${h.taskQueue}'`);
    }
    // An Azure proxy's worker uploads the VHDs of the restores that name the proxy, and does nothing else.
    for (const p of opts.verifier || opts.helperLocation !== undefined ? [] : azureProxyQueues(served, opts.azureProxy)) {
      const { uploadVhd } = createMappedAzureActivities({ config: served, client, workerIdentity: p.identity });
      workers.push(await Worker.create({ ...common, taskQueue: p.taskQueue, identity: p.identity, activities: { uploadVhd } }));
      log(`Azure proxy worker (${p.name}) polling task queue '${p.taskQueue}'`);
    }
    // The verification worker boots restored disks under qemu, and does nothing else; it heartbeats itself.
    if (opts.verifier || (opts.helperLocation === undefined && opts.azureProxy === undefined && config.verifier?.embeddedWorker)) {
      const queue = verifierTaskQueue(taskQueue);
      workers.push(
        await Worker.create({
          ...common,
          taskQueue: queue,
          identity: `${process.pid}@${hostname()}/vmrestore-verifier`,
          activities: createMappedVerifyActivities({ config, sessions }),
        }),
      );
      log(`verification worker polling task queue '${queue}'`);
    }
    // One worker failing stops the others, so the process never runs half its queues.
    let stopAll!: () => void;
    const failed = new Promise<void>((resolve) => (stopAll = resolve));
    const until = opts.until ? Promise.race([opts.until, failed]) : failed;
    const results = await Promise.allSettled(
      workers.map((w) =>
        w.runUntil(until).catch((err: unknown) => {
          stopAll();
          throw err;
        }),
      ),
    );
    const failure = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failure) throw failure.reason;
  } finally {
    await telemetry.close();
    await sessions.closeAll();
    await clientConnection.close();
    await connection.close();
  }
}
