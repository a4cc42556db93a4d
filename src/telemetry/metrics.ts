import { createServer, request as httpRequest, type Server } from 'node:http';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import type { ActivityExecuteInput, ActivityInboundCallsInterceptor, InjectedSinks, Next } from '@temporalio/worker';
import type { WorkflowInfo } from '@temporalio/workflow';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RestoreMetricsSinks, RestoreOutcome } from '../domain/metrics';

/**
 * The worker's own metrics, in one registry. Activities count into it whether or not anything scrapes
 * it (`vmrestore worker --metrics ADDR` serves it), so counting costs an addition and nothing else.
 */
export const registry = new Registry();

export const restoredBytes = new Counter({
  name: 'vmrestore_restored_bytes_total',
  help: 'Disk bytes written to vSphere disks (zero ranges left as holes are not counted)',
  labelNames: ['target', 'transport'] as const,
  registers: [registry],
});

export const uploadedBytes = new Counter({
  name: 'vmrestore_uploaded_bytes_total',
  help: 'Bytes uploaded to Azure page blobs (pages written, and the VHD footer)',
  labelNames: ['target', 'transport'] as const,
  registers: [registry],
});

export const restoresTotal = new Counter({
  name: 'vmrestore_restores_total',
  help: 'Restores that closed on this worker, by target, outcome (completed, failed, cancelled) and failure type',
  labelNames: ['target', 'outcome', 'failure_type'] as const,
  registers: [registry],
});

export const restoreDuration = new Histogram({
  name: 'vmrestore_restore_duration_seconds',
  help: 'Time from a restore workflow start to its close, by target and outcome',
  labelNames: ['target', 'outcome'] as const,
  buckets: [5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800],
  registers: [registry],
});

export const activityRetries = new Counter({
  name: 'vmrestore_activity_retries_total',
  help: 'Activity attempts that failed and will be retried, by activity and failure type',
  labelNames: ['activity', 'failure_type'] as const,
  registers: [registry],
});

export const activityFailures = new Counter({
  name: 'vmrestore_activity_failures_total',
  help: 'Activity attempts that failed (retried or not), by activity and failure type',
  labelNames: ['activity', 'failure_type', 'retryable'] as const,
  registers: [registry],
});

export const activitiesRunning = new Gauge({
  name: 'vmrestore_activities_running',
  help: 'Activities running on this worker, by activity',
  labelNames: ['activity'] as const,
  registers: [registry],
});

/** Counts bytes as a restore's blocks pass on to the target: `onBytes` gets each data block's length. */
export async function* countedBlocks<B extends { length: number; data?: unknown }>(
  blocks: AsyncIterable<B>,
  onBytes: (n: number) => void,
): AsyncGenerator<B> {
  for await (const b of blocks) {
    yield b;
    // Counted once the consumer asks for the next block, i.e. once this one is written.
    if (b.data) onBytes(b.length);
  }
}

/** Turns a cumulative byte figure (a progress callback's) into counter increments. */
export function deltaCounter(inc: (n: number) => void): (cumulative: number) => void {
  let last = 0;
  return (cumulative) => {
    if (cumulative > last) inc(cumulative - last);
    last = Math.max(last, cumulative);
  };
}

/** The restore workflows this worker counts, and their target label. */
const RESTORE_TARGETS: Record<string, string> = { restoreToVSphere: 'vsphere', restoreToAzure: 'azure' };

/** Sinks the restore-outcome workflow interceptor calls (never during replay, so a close is counted once). */
export function restoreMetricsSinks(): InjectedSinks<RestoreMetricsSinks> {
  return {
    restoreMetrics: {
      closed: {
        fn: (info: WorkflowInfo, outcome: RestoreOutcome, failureType: string, durationMs: number) => {
          const target = RESTORE_TARGETS[info.workflowType];
          if (!target) return;
          restoresTotal.inc({ target, outcome, failure_type: failureType });
          restoreDuration.observe({ target, outcome }, durationMs / 1000);
        },
        callDuringReplay: false,
      },
    },
  };
}

/** The type a failure is counted under: an ApplicationFailure's type, else the error's name. */
export function failureTypeOf(err: unknown): string {
  if (err instanceof ApplicationFailure) return err.type ?? 'ApplicationFailure';
  if (err instanceof Error) return err.name;
  return 'unknown';
}

/** Counts failed activity attempts by failure type, and those the server will retry. */
export class ActivityMetricsInterceptor implements ActivityInboundCallsInterceptor {
  constructor(private readonly info: { activityType: string; attempt: number; retryPolicy?: ActivityRetryPolicy }) {}

  async execute(input: ActivityExecuteInput, next: Next<ActivityInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    const activity = this.info.activityType;
    activitiesRunning.inc({ activity });
    try {
      return await next(input);
    } catch (err) {
      if (!(err instanceof CancelledFailure)) {
        const failureType = failureTypeOf(err);
        const retryable = willRetry(err, failureType, this.info.attempt, this.info.retryPolicy);
        activityFailures.inc({ activity, failure_type: failureType, retryable: String(retryable) });
        if (retryable) activityRetries.inc({ activity, failure_type: failureType });
      }
      throw err;
    } finally {
      activitiesRunning.dec({ activity });
    }
  }
}

type ActivityRetryPolicy = { maximumAttempts?: number; nonRetryableErrorTypes?: string[] };

function willRetry(err: unknown, failureType: string, attempt: number, policy?: ActivityRetryPolicy): boolean {
  if (err instanceof ApplicationFailure && err.nonRetryable) return false;
  if (policy?.nonRetryableErrorTypes?.includes(failureType)) return false;
  const max = policy?.maximumAttempts ?? 0;
  return max <= 0 || attempt < max;
}

/** Gauges read at scrape time from the lease workflows (one per shared appliance VM). */
export interface LeaseSnapshot {
  kind: string;
  name: string;
  vmName: string;
  holders: number;
  poweredOn: boolean;
  slotsInUse: number;
  slots?: number;
}

const leaseHolders = new Gauge({
  name: 'vmrestore_lease_holders',
  help: 'Restores holding the lease on a shared appliance VM (Azure proxy or helper appliance)',
  labelNames: ['kind', 'name', 'vm'] as const,
  registers: [registry],
});
const appliancePoweredOn = new Gauge({
  name: 'vmrestore_appliance_powered_on',
  help: '1 while a shared appliance VM is powered on by its lease, else 0',
  labelNames: ['kind', 'name', 'vm'] as const,
  registers: [registry],
});
const leaseSlotsInUse = new Gauge({
  name: 'vmrestore_lease_slots_in_use',
  help: "Data-disk slots holders have reserved on a shared appliance VM (a proxy's or helper's attached restore disks)",
  labelNames: ['kind', 'name', 'vm'] as const,
  registers: [registry],
});
const leaseSlots = new Gauge({
  name: 'vmrestore_lease_slots',
  help: 'Data-disk slots a shared appliance VM offers (its size allows this many data disks)',
  labelNames: ['kind', 'name', 'vm'] as const,
  registers: [registry],
});

/** Sets the lease gauges to these leases; leases that no longer run drop out. */
export function setLeaseSnapshots(leases: LeaseSnapshot[]): void {
  for (const g of [leaseHolders, appliancePoweredOn, leaseSlotsInUse, leaseSlots]) g.reset();
  for (const l of leases) {
    const labels = { kind: l.kind, name: l.name, vm: l.vmName };
    leaseHolders.set(labels, l.holders);
    appliancePoweredOn.set(labels, l.poweredOn ? 1 : 0);
    leaseSlotsInUse.set(labels, l.slotsInUse);
    if (l.slots !== undefined) leaseSlots.set(labels, l.slots);
  }
}

export interface MetricsServerOptions {
  /** host:port to listen on (port 0 picks a free one). */
  address: string;
  /** host:port of the Temporal SDK's own Prometheus exporter, whose metrics are served alongside ours. */
  sdkAddress?: string;
  /** Called before each scrape to refresh scrape-time gauges (the lease gauges); its errors are logged. */
  beforeScrape?: () => Promise<void>;
  log?: (line: string) => void;
}

export interface MetricsServer {
  /** The address actually bound, host:port. */
  address: string;
  close(): Promise<void>;
}

/** Parses host:port (IPv6 hosts in brackets); names the flag in its error. */
export function parseListenAddress(value: string, what = '--metrics'): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:\s]*)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`${what}: expected host:port (for example 127.0.0.1:9464 or 0.0.0.0:9464), got '${value}'`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

function fetchText(address: string, timeoutMs: number): Promise<string> {
  const { host, port } = parseListenAddress(address, 'SDK metrics address');
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host, port, path: '/metrics', timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/**
 * Serves `/metrics`: this worker's registry followed by the Temporal SDK's metrics (Core's exporter
 * listens on a loopback port of its own; its families carry the `temporal_` prefix, so none collide).
 */
export async function startMetricsServer(opts: MetricsServerOptions): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(opts.address);
  // Process figures (memory, CPU, event loop lag) of the worker, only where a worker serves metrics.
  if (!registry.getSingleMetric('vmrestore_worker_process_resident_memory_bytes'))
    collectDefaultMetrics({ register: registry, prefix: 'vmrestore_worker_' });
  const log = opts.log ?? (() => {});
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '/').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('metrics are served at /metrics\n');
      return;
    }
    void (async () => {
      try {
        if (opts.beforeScrape) await opts.beforeScrape().catch((err: unknown) => log(`metrics: ${(err as Error).message}`));
        let body = await registry.metrics();
        if (opts.sdkAddress) {
          try {
            body += '\n' + (await fetchText(opts.sdkAddress, 2000));
          } catch (err) {
            log(`metrics: the Temporal SDK's metrics at ${opts.sdkAddress} did not answer: ${(err as Error).message}`);
          }
        }
        res.writeHead(200, { 'content-type': registry.contentType }).end(body);
      } catch (err) {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`${(err as Error).message}\n`);
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new Error(`--metrics ${opts.address}: cannot listen: ${err.message}`)));
    server.listen(port, host, () => resolve());
  });
  const bound = server.address();
  const actual = typeof bound === 'object' && bound ? bound.port : port;
  return {
    address: `${host.includes(':') ? `[${host}]` : host}:${actual}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
