import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ApplicationFailure, CancelledFailure } from '@temporalio/common';
import { parse } from 'yaml';
import { parseConfig } from '../../src/config';
import {
  ActivityMetricsInterceptor,
  countedBlocks,
  deltaCounter,
  parseListenAddress,
  registry,
  startMetricsServer,
} from '../../src/telemetry/metrics';
import { tracingEndpoint } from '../../src/telemetry/tracing';
import { dashboardMetricNames, sampleValue } from '../helpers/prometheus';

const ROOT = path.resolve(__dirname, '..', '..');
const base = { vsphere: { profiles: { prod: { url: 'https://vc.example.com/sdk', username: 'u', passwordEnv: 'P' } } } };

/** Runs an activity attempt through the interceptor; returns the retry and failure counts it added. */
async function failAttempt(
  activityType: string,
  err: unknown,
  attempt = 1,
  retryPolicy?: { maximumAttempts?: number; nonRetryableErrorTypes?: string[] },
): Promise<{ retries: number; failures: number }> {
  const read = async () => {
    const text = await registry.metrics();
    return {
      retries: sampleValue(text, 'vmrestore_activity_retries_total', { activity: activityType }) ?? 0,
      failures: sampleValue(text, 'vmrestore_activity_failures_total', { activity: activityType }) ?? 0,
    };
  };
  const before = await read();
  const i = new ActivityMetricsInterceptor({ activityType, attempt, retryPolicy });
  await assert.rejects(i.execute({ args: [], headers: {} }, () => Promise.reject(err)));
  const after = await read();
  return { retries: after.retries - before.retries, failures: after.failures - before.failures };
}

describe('worker metrics', () => {
  it('counts a retryable activity failure as a retry under its failure type', async () => {
    assert.deepEqual(await failAttempt('t1', ApplicationFailure.retryable('vCenter busy', 'VSphereFault')), { retries: 1, failures: 1 });
    const text = await registry.metrics();
    assert.equal(sampleValue(text, 'vmrestore_activity_retries_total', { activity: 't1', failure_type: 'VSphereFault' }), 1);
    assert.equal(sampleValue(text, 'vmrestore_activities_running', { activity: 't1' }), 0);
  });

  it('does not count as retries: non-retryable failures, the last attempt, types the policy stops on, cancellation', async () => {
    assert.deepEqual(await failAttempt('t2', ApplicationFailure.nonRetryable('bad request', 'InvalidRequest')), {
      retries: 0,
      failures: 1,
    });
    assert.deepEqual(await failAttempt('t3', new Error('boom'), 3, { maximumAttempts: 3 }), { retries: 0, failures: 1 });
    assert.deepEqual(await failAttempt('t4', new Error('boom'), 2, { maximumAttempts: 3 }), { retries: 1, failures: 1 });
    assert.deepEqual(
      await failAttempt('t5', ApplicationFailure.retryable('x', 'LeaseCapacity'), 1, { nonRetryableErrorTypes: ['LeaseCapacity'] }),
      { retries: 0, failures: 1 },
    );
    assert.deepEqual(await failAttempt('t6', new CancelledFailure('cancelled')), { retries: 0, failures: 0 });
    const text = await registry.metrics();
    assert.equal(sampleValue(text, 'vmrestore_activity_failures_total', { activity: 't3', failure_type: 'Error', retryable: 'false' }), 1);
  });

  it('counts the data blocks that pass to the target, and cumulative figures as increments', async () => {
    let counted = 0;
    async function* blocks() {
      yield { length: 10, data: Buffer.alloc(10) };
      yield { length: 20, data: null };
      yield { length: 5, data: Buffer.alloc(5) };
    }
    const seen: number[] = [];
    for await (const b of countedBlocks(blocks(), (n) => (counted += n))) seen.push(b.length);
    assert.deepEqual(seen, [10, 20, 5]);
    assert.equal(counted, 15, 'zero blocks (holes) are not counted');
    let total = 0;
    const delta = deltaCounter((n) => (total += n));
    for (const v of [0, 100, 100, 250, 200, 300]) delta(v);
    assert.equal(total, 300);
  });

  it('parses listen addresses and names the flag in errors', () => {
    assert.deepEqual(parseListenAddress('0.0.0.0:9464'), { host: '0.0.0.0', port: 9464 });
    assert.deepEqual(parseListenAddress(':9464'), { host: '0.0.0.0', port: 9464 });
    assert.deepEqual(parseListenAddress('[::1]:9464'), { host: '::1', port: 9464 });
    assert.throws(() => parseListenAddress('9464'), /--metrics: expected host:port .* got '9464'/);
    assert.throws(() => parseListenAddress('host:99999'), /--metrics/);
  });

  it('serves the registry at /metrics and nothing elsewhere; a taken address is an error naming it', async () => {
    const server = await startMetricsServer({ address: '127.0.0.1:0' });
    try {
      const res = await fetch(`http://${server.address}/metrics`);
      assert.equal(res.status, 200);
      const text = await res.text();
      assert.match(text, /# TYPE vmrestore_restored_bytes_total counter/);
      assert.match(text, /vmrestore_worker_process_resident_memory_bytes \d+/);
      assert.equal((await fetch(`http://${server.address}/`)).status, 404);
      await assert.rejects(startMetricsServer({ address: server.address }), new RegExp(`--metrics ${server.address}: cannot listen`));
    } finally {
      await server.close();
    }
  });
});

describe('telemetry configuration', () => {
  it('takes telemetry.metrics and telemetry.otlpEndpoint, and names bad keys and values', () => {
    const cfg = parseConfig({ ...base, telemetry: { metrics: '0.0.0.0:9464', otlpEndpoint: 'http://collector:4318' } }, 't', '/');
    assert.deepEqual(cfg.telemetry, { metrics: '0.0.0.0:9464', otlpEndpoint: 'http://collector:4318' });
    assert.throws(() => parseConfig({ ...base, telemetry: { metrics: '9464' } }, 't', '/'), /telemetry\.metrics: expected host:port/);
    assert.throws(() => parseConfig({ ...base, telemetry: { otlpEndpoint: 'collector:4318' } }, 't', '/'), /telemetry\.otlpEndpoint/);
    assert.throws(() => parseConfig({ ...base, telemetry: { jaeger: 'x' } }, 't', '/'), /telemetry\.jaeger: unknown key/);
  });

  it('traces only when an endpoint is configured, and not when OpenTelemetry is turned off', () => {
    assert.equal(tracingEndpoint(undefined, {}), undefined);
    assert.equal(tracingEndpoint(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }), 'http://c:4318');
    assert.equal(
      tracingEndpoint({ telemetry: { otlpEndpoint: 'http://a:4318' } }, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }),
      'http://a:4318',
    );
    assert.equal(tracingEndpoint(undefined, { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }), undefined);
  });
});

describe('deploy/: Prometheus and the Grafana dashboard', () => {
  const compose = parse(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8')) as {
    services: Record<string, { image?: string; command?: string[]; volumes?: string[]; depends_on?: string[] }>;
  };
  const prometheus = parse(readFileSync(path.join(ROOT, 'deploy', 'prometheus', 'prometheus.yml'), 'utf8')) as {
    scrape_configs: { job_name: string; metrics_path?: string; static_configs: { targets: string[] }[] }[];
  };
  const dashboard = JSON.parse(readFileSync(path.join(ROOT, 'deploy', 'grafana', 'dashboards', 'vmrestore.json'), 'utf8')) as {
    uid: string;
    panels: { type: string; title: string; datasource?: { uid: string }; targets?: { expr: string }[] }[];
  };

  it('Prometheus scrapes the port the compose worker serves metrics on', () => {
    const cmd = compose.services.worker.command!;
    const addr = cmd[cmd.indexOf('--metrics') + 1];
    const { port } = parseListenAddress(addr);
    const targets = prometheus.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets));
    assert.deepEqual(targets, [`worker:${port}`]);
    assert.match(compose.services.prometheus.image!, /^prom\/prometheus:v\d/);
    assert.ok(
      compose.services.prometheus.volumes!.some((v) => v.startsWith('./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml')),
    );
  });

  it("Grafana gets the datasource the dashboard's panels name, and the dashboard folder", () => {
    const ds = parse(readFileSync(path.join(ROOT, 'deploy', 'grafana', 'provisioning', 'datasources', 'prometheus.yml'), 'utf8')) as {
      datasources: { uid: string; url: string }[];
    };
    assert.equal(ds.datasources[0].url, 'http://prometheus:9090');
    const uids = new Set(dashboard.panels.filter((p) => p.type !== 'row').map((p) => p.datasource?.uid));
    assert.deepEqual([...uids], [ds.datasources[0].uid]);
    const provider = parse(readFileSync(path.join(ROOT, 'deploy', 'grafana', 'provisioning', 'dashboards', 'vmrestore.yml'), 'utf8')) as {
      providers: { options: { path: string } }[];
    };
    const mount = compose.services.grafana.volumes!.find((v) => v.startsWith('./deploy/grafana/dashboards:'))!;
    assert.equal(mount.split(':')[1], provider.providers[0].options.path);
    assert.ok(compose.services.grafana.volumes!.some((v) => v.startsWith('./deploy/grafana/provisioning:/etc/grafana/provisioning')));
  });

  it("every panel queries something, and every vmrestore_ metric it names is one the worker's registry declares", async () => {
    for (const p of dashboard.panels.filter((x) => x.type !== 'row'))
      assert.ok(p.targets && p.targets.length > 0, `panel '${p.title}' has queries`);
    const declared = new Set((await registry.getMetricsAsJSON()).map((m) => m.name));
    const names = [...dashboardMetricNames(dashboard)].filter((n) => n.startsWith('vmrestore_'));
    const histogramParts = (n: string) => n.replace(/_(bucket|sum|count)$/, '');
    assert.ok(names.length >= 10, `dashboard metric names: ${names.join(', ')}`);
    assert.deepEqual(
      names.filter((n) => !declared.has(n) && !declared.has(histogramParts(n))),
      [],
    );
  });
});
