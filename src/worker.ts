import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { startWorkerTelemetry } from './telemetry/worker';
import { azureProxyQueues, createMappedAzureActivities } from './activities/azure';
import { DEFAULT_PROXY_MAX_TASKS, helperTaskQueue, insecureWarnings, type AppConfig, type ProxyConfig } from './config';
import { createMappedVSphereActivities } from './activities/vsphere';
import { createMappedVSphereImportActivities } from './activities/vsphere-import';
import { VSphereSessions } from './activities/vsphere/sessions';
import { withFailureMapping } from './activities/failures';
import { withHeartbeat } from './activities/heartbeat';
import { createSweepActivities } from './activities/sweep';
import { createPlanActivities } from './activities/plan';
import { createMappedVerifyActivities } from './activities/verify';
import { verifierTaskQueue } from './domain/verification';
import { proxyTaskQueue } from './domain/task-queues';
import { FailureType, RestoreError } from './domain/errors';
import type { DiskWriteResult } from './domain/vsphere';
import { createProxySlotActivities } from './activities/vsphere/proxy-slots';
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
  /**
   * Serve only the task queue of this vSphere proxy (`<queue>-proxy-<name>`): what runs on the proxy host,
   * writing the disks planned for it. The main worker serves it too when the proxy's `embeddedWorker` is set (the lab).
   */
  proxyName?: string;
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

/** The proxy's configuration as its own worker must honour it: every path it names exists on this host. */
export function checkProxyHost(config: AppConfig, name: string): ProxyConfig {
  const proxy = config.proxies.find((p) => p.name === name);
  if (!proxy) {
    throw new Error(`no vSphere proxy named '${name}' is configured (known: ${config.proxies.map((p) => p.name).join(', ') || 'none'})`);
  }
  const where = `proxies[${config.proxies.indexOf(proxy)}]`;
  for (const key of ['nasMounts', 'sanLuns', 'hotaddDevices'] as const) {
    for (const [datastore, dir] of Object.entries(proxy[key] ?? {})) {
      if (!existsSync(dir)) {
        throw new Error(`proxy '${name}': ${where}.${key}.${datastore} is '${dir}', which does not exist on this host`);
      }
    }
  }
  return proxy;
}

/** Builds the activity dependencies from config and runs a worker until told to stop. */
export async function runWorker(opts: RunWorkerOptions): Promise<void> {
  const { config } = opts;
  const log = opts.log ?? (() => {});
  for (const w of insecureWarnings(config)) log(w);
  const roles = [
    opts.helperLocation !== undefined && '--helper',
    opts.verifier && '--verifier',
    opts.proxyName !== undefined && '--proxy',
    opts.azureProxy !== undefined && '--azure-proxy',
  ];
  if (roles.filter(Boolean).length > 1) throw new Error(`a worker has one role, got ${roles.filter(Boolean).join(' and ')}`);
  const control = !roles.some(Boolean);
  // Checked before anything connects: a proxy whose paths are missing on this host never polls.
  const proxies = control
    ? config.proxies.filter((p) => p.embeddedWorker)
    : opts.proxyName !== undefined
      ? [checkProxyHost(config, opts.proxyName)]
      : [];
  for (const p of proxies) checkProxyHost(config, p.name);

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
    const { writeDisk } = createMappedVSphereActivities({ config, sessions, client });
    for (const p of proxies) {
      const queue = proxyTaskQueue(taskQueue, p.name);
      const identity = `${process.pid}@${hostname()}/vmrestore-proxy-${p.name}`;
      workers.push(
        await Worker.create({
          ...common,
          taskQueue: queue,
          identity,
          // Slots are counted by the control side; this only keeps a misrouted burst from overloading the host.
          maxConcurrentActivityTaskExecutions: (p.maxTasks ?? DEFAULT_PROXY_MAX_TASKS) * 2,
          activities: {
            async writeDisk(args: Parameters<typeof writeDisk>[0]): Promise<DiskWriteResult> {
              if (args.plan.proxy !== p.name) {
                throw new RestoreError(
                  FailureType.InvalidRequest,
                  `disk ${args.diskIndex} is planned for proxy '${args.plan.proxy}' but reached the worker of proxy '${p.name}' (queue '${queue}')`,
                );
              }
              return { ...(await writeDisk(args)), proxy: p.name, workerIdentity: identity };
            },
          },
        }),
      );
      log(`proxy worker (${p.name}) polling task queue '${queue}'`);
    }
    if (control) {
      telemetry.watchLeases(client, taskQueue);
      workers.push(
        await Worker.create({
          ...common,
          taskQueue,
          ...(await workflowCode(require.resolve('./workflows'), { ...telemetry.workerOptions, dataConverter })),
          // Control activities heartbeat while they run, so a dead worker costs one heartbeat timeout.
          activities: withHeartbeat({
            // Disk writes run on the proxies' queues only.
            ...withoutWriteDisk(createMappedVSphereActivities({ config, sessions })),
            ...withFailureMapping(createProxySlotActivities({ config: served, client })),
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
    for (const h of opts.verifier || opts.proxyName !== undefined || opts.azureProxy !== undefined
      ? []
      : helperQueues(served, opts.helperLocation)) {
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
    for (const p of opts.verifier || opts.helperLocation !== undefined || opts.proxyName !== undefined
      ? []
      : azureProxyQueues(served, opts.azureProxy)) {
      const { uploadVhd } = createMappedAzureActivities({ config: served, client, workerIdentity: p.identity });
      workers.push(await Worker.create({ ...common, taskQueue: p.taskQueue, identity: p.identity, activities: { uploadVhd } }));
      log(`Azure proxy worker (${p.name}) polling task queue '${p.taskQueue}'`);
    }
    // The verification worker boots restored disks under qemu, and does nothing else; it heartbeats itself.
    if (opts.verifier || (control && config.verifier?.embeddedWorker)) {
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

function withoutWriteDisk<T extends { writeDisk: unknown }>(acts: T): Omit<T, 'writeDisk'> {
  const { writeDisk: _, ...rest } = acts;
  return rest;
}
