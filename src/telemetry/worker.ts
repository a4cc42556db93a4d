import { createServer } from 'node:net';
import type { Client, WorkflowClientInterceptor } from '@temporalio/client';
import { Runtime, type WorkerOptions } from '@temporalio/worker';
import type { AppConfig } from '../config';
import type { LeaseState } from '../domain/lease';
import { leaseStateQuery } from '../domain/lease';
import {
  ActivityMetricsInterceptor,
  parseListenAddress,
  restoreMetricsSinks,
  setLeaseSnapshots,
  startMetricsServer,
  type LeaseSnapshot,
  type MetricsServer,
} from './metrics';
import { installTracing, tracingClientInterceptors, tracingEndpoint, tracingWorkerPlugin } from './tracing';

export interface WorkerTelemetry {
  /** Spread into every Worker.create of the process. */
  workerOptions: Pick<WorkerOptions, 'interceptors' | 'sinks' | 'plugins'>;
  /** For the worker's own client (lease updates), so they join the restore's trace. */
  clientInterceptors: WorkflowClientInterceptor[];
  /** Lease gauges come from the lease workflows of this queue, read when metrics are scraped. */
  watchLeases(client: Client, taskQueue: string): void;
  close(): Promise<void>;
}

/** A free loopback port for the SDK's exporter, which binds it itself. */
async function freeLoopbackPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** Leases read at most this often, however often Prometheus scrapes. */
const LEASE_READ_INTERVAL_MS = 2000;

async function readLeases(client: Client, taskQueue: string): Promise<LeaseSnapshot[]> {
  const query = `WorkflowType = 'resourceLease' AND ExecutionStatus = 'Running' AND TaskQueue = '${taskQueue.replace(/'/g, "\\'")}'`;
  const ids: string[] = [];
  for await (const w of client.workflow.list({ query, pageSize: 100 })) {
    ids.push(w.workflowId);
    if (ids.length >= 500) break;
  }
  const states = await Promise.all(
    ids.map((id) =>
      client.workflow
        .getHandle(id)
        .query(leaseStateQuery)
        .catch(() => undefined),
    ),
  );
  return states
    .filter((s): s is LeaseState => s !== undefined)
    .map((s) => ({
      kind: s.target.kind,
      name: s.target.name,
      vmName: s.target.vmName,
      holders: s.holders.length,
      poweredOn: s.poweredOn,
      slotsInUse: Object.values(s.reserved ?? {}).reduce((a, n) => a + n, 0),
      slots: s.target.slots,
    }));
}

/**
 * Metrics (with `metrics`, or the config's telemetry.metrics) and tracing (when an OTLP endpoint is
 * configured) for a worker process. The SDK's runtime metrics need the runtime installed before any
 * connection exists, so this runs first; it fails rather than serve half the metrics.
 */
export async function startWorkerTelemetry(opts: {
  config: AppConfig;
  metrics?: string;
  log: (line: string) => void;
}): Promise<WorkerTelemetry> {
  const address = opts.metrics ?? opts.config.telemetry?.metrics;
  const tracing = installTracing(opts.config, 'vmrestore-worker');
  const workerOptions: WorkerTelemetry['workerOptions'] = { plugins: tracing ? [tracingWorkerPlugin(tracing)] : [] };
  let server: MetricsServer | undefined;
  let leases: { client: Client; taskQueue: string } | undefined;
  if (address !== undefined) {
    parseListenAddress(address);
    const sdkAddress = `127.0.0.1:${await freeLoopbackPort()}`;
    try {
      Runtime.install({
        telemetryOptions: {
          metrics: { prometheus: { bindAddress: sdkAddress, countersTotalSuffix: true, unitSuffix: true, useSecondsForDurations: true } },
        },
      });
    } catch (err) {
      throw new Error(
        `--metrics: the Temporal SDK runtime of this process already exists, so its metrics cannot be exported (${(err as Error).message})`,
      );
    }
    let leasesReadAt = 0;
    server = await startMetricsServer({
      address,
      sdkAddress,
      log: opts.log,
      beforeScrape: async () => {
        if (!leases || Date.now() - leasesReadAt < LEASE_READ_INTERVAL_MS) return;
        leasesReadAt = Date.now();
        setLeaseSnapshots(await readLeases(leases.client, leases.taskQueue));
      },
    });
    workerOptions.interceptors = {
      activity: [(ctx) => ({ inbound: new ActivityMetricsInterceptor(ctx.info) })],
      workflowModules: [require.resolve('../workflows/metrics-interceptors')],
    };
    workerOptions.sinks = restoreMetricsSinks();
    opts.log(`metrics at http://${server.address}/metrics (this worker's and the Temporal SDK's)`);
  }
  if (tracing) opts.log(`tracing: spans exported by OTLP/HTTP to ${tracingEndpoint(opts.config)}`);
  return {
    workerOptions,
    clientInterceptors: tracing ? tracingClientInterceptors(opts.config) : [],
    watchLeases: (client, taskQueue) => (leases = { client, taskQueue }),
    close: async () => {
      await server?.close();
      await tracing?.shutdown();
    },
  };
}
