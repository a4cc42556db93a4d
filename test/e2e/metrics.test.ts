import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { buildDataDiskImage } from '../../src/lab/demo';
import { importTestVm, openTestEnv, ROOT, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { labVSphere } from '../helpers/vsphere';
import { clearFaults, setFaults } from '../helpers/azure';
import { startAzureRestore } from '../../src/client/restore';
import { dashboardMetricNames, metricFamilies, sampleValue } from '../helpers/prometheus';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const DISK_BYTES = 40 * MiB;

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
}

/** A minimal OTLP/HTTP collector: takes JSON trace exports and keeps their spans. */
async function startOtlpReceiver(): Promise<{ url: string; spans: OtlpSpan[]; requests: () => number; close(): Promise<void> }> {
  const spans: OtlpSpan[] = [];
  let requests = 0;
  const server: Server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (d: string) => (body += d));
    req.on('end', () => {
      requests++;
      if (req.url !== '/v1/traces' || !String(req.headers['content-type']).includes('json')) {
        res.writeHead(415).end();
        return;
      }
      const doc = JSON.parse(body) as { resourceSpans: { scopeSpans: { spans: OtlpSpan[] }[] }[] };
      for (const rs of doc.resourceSpans) for (const ss of rs.scopeSpans) spans.push(...ss.spans);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    requests: () => requests,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  assert.equal(res.status, 200, `GET ${url}`);
  return res.text();
}

/** Scrapes until `ready` holds of a scrape (10 s at most); returns the last scrape either way. */
async function scrapeUntil(url: string, ready: (text: string) => boolean): Promise<string> {
  const end = Date.now() + 10_000;
  for (;;) {
    const text = await scrape(url);
    if (ready(text) || Date.now() > end) return text;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function until<T>(what: string, fn: () => T | undefined, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

let env: TestEnv;
let worker: WorkerProcess;
let otlp: Awaited<ReturnType<typeof startOtlpReceiver>>;
let metricsUrl: string;
let workDir: string;
let restorePointId: string;

describe('worker metrics and traces (a real worker process, the lab, an OTLP receiver)', () => {
  before(async () => {
    otlp = await startOtlpReceiver();
    env = await openTestEnv('metrics');
    workDir = mkdtempSync(path.join(tmpdir(), 'vmrestore-metrics-'));
    buildDataDiskImage(path.join(workDir, 'disk0.img'), DISK_BYTES, [[0, DISK_BYTES]], `metrics-${Date.now()}`);
    restorePointId = await importTestVm(env.config.repository.path, workDir, {
      name: 'metrics-vm',
      disks: [{ path: 'disk0.img', provisioning: 'thin' }],
    });
    worker = await startWorkerProcess(env.taskQueue, { OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_BSP_SCHEDULE_DELAY: '200' }, [
      '--metrics',
      '127.0.0.1:0',
    ]);
    const m = await until(
      'the metrics address in the worker output',
      () => /metrics at (http:\/\/\S+\/metrics)/.exec(worker.output())?.[1],
    );
    metricsUrl = m;
  });
  after(async () => {
    await clearFaults().catch(() => {});
    await worker?.stop();
    await env?.close();
    await otlp?.close();
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  });

  it('counts restored bytes while a restore runs, then its outcome and duration; one trace covers the restore', async () => {
    const before = await scrape(metricsUrl);
    const labels = { target: 'vsphere', transport: 'nbd' };
    assert.equal(sampleValue(before, 'vmrestore_restored_bytes_total', labels) ?? 0, 0, 'nothing restored yet');

    const vmName = `t-metrics-${Date.now().toString(36)}`;
    // 40 MiB at 16 MB/s: the disk write takes between two and three seconds, long enough to watch.
    const cli = run(
      process.execPath,
      [
        path.join(ROOT, 'bin', 'vmrestore.cjs'),
        'restore',
        'vsphere',
        '--restore-point',
        restorePointId,
        '--vm-name',
        vmName,
        '--transport',
        'nbd',
        '--throttle-mbps',
        '16',
        '--wait',
        '--json',
      ],
      {
        env: { ...process.env, VMRESTORE_TASK_QUEUE: env.taskQueue, OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url, OTEL_BSP_SCHEDULE_DELAY: '200' },
      },
    );
    let done = false;
    void cli.finally(() => (done = true)).catch(() => {});
    const during: number[] = [];
    while (!done) {
      const v = sampleValue(await scrape(metricsUrl), 'vmrestore_restored_bytes_total', labels);
      if (v !== undefined) during.push(v);
      await new Promise((r) => setTimeout(r, 150));
    }
    const out = await cli;
    const lines = out.stdout.trim().split('\n');
    const summary = JSON.parse(lines[lines.length - 1]) as {
      status: string;
      workflowId: string;
      result: { disks: { bytesWritten: number }[] };
    };
    assert.equal(summary.status, 'COMPLETED', out.stdout + out.stderr);
    assert.equal(summary.result.disks[0].bytesWritten, DISK_BYTES);

    const partial = during.filter((v) => v > 0 && v < DISK_BYTES);
    assert.ok(partial.length >= 2, `scrapes during the restore saw bytes moving (values: ${during.join(', ')})`);
    assert.ok(
      partial.every((v, i) => i === 0 || v >= partial[i - 1]),
      `restored bytes never go down (${partial.join(', ')})`,
    );
    assert.ok(new Set(partial).size >= 2, `restored bytes grew between scrapes (${partial.join(', ')})`);

    const final = await scrapeUntil(
      metricsUrl,
      (t) => sampleValue(t, 'vmrestore_restores_total', { target: 'vsphere', outcome: 'completed' }) === 1,
    );
    assert.equal(sampleValue(final, 'vmrestore_restored_bytes_total', labels), DISK_BYTES, 'every byte of the disk counted once');
    assert.equal(sampleValue(final, 'vmrestore_restores_total', { target: 'vsphere', outcome: 'completed', failure_type: '' }), 1);
    assert.equal(sampleValue(final, 'vmrestore_restore_duration_seconds_count', { target: 'vsphere', outcome: 'completed' }), 1);
    const seconds = sampleValue(final, 'vmrestore_restore_duration_seconds_sum', { target: 'vsphere', outcome: 'completed' })!;
    assert.ok(seconds >= 2 && seconds < 120, `restore duration ${seconds} s`);
    // The Temporal SDK's own metrics are served on the same endpoint.
    const families = metricFamilies(final);
    assert.ok(
      sampleValue(final, 'temporal_activity_execution_latency_seconds_count', { activity_type: 'writeDisk' })! >= 1,
      'SDK activity latency',
    );
    assert.ok(families.has('temporal_workflow_completed_total'), 'SDK workflow completions');

    // The dashboard shows only metrics this worker serves.
    const dashboard = JSON.parse(readFileSync(path.join(ROOT, 'deploy', 'grafana', 'dashboards', 'vmrestore.json'), 'utf8')) as unknown;
    const missing = [...dashboardMetricNames(dashboard)].filter((n) => !families.has(n));
    assert.deepEqual(missing, [], 'dashboard metrics missing from the scrape');

    // Traces: the CLI's start, the workflow run and every activity the workflow ran, in one trace.
    const history = await env.client.workflow.getHandle(summary.workflowId).fetchHistory();
    const activityTypes = new Set(
      (history.events ?? []).flatMap((e) =>
        e.activityTaskScheduledEventAttributes?.activityType?.name ? [e.activityTaskScheduledEventAttributes.activityType.name] : [],
      ),
    );
    assert.ok(activityTypes.has('writeDisk') && activityTypes.size >= 4, `activities in history: ${[...activityTypes].join(', ')}`);
    const run0 = await until('the workflow span', () => otlp.spans.find((s) => s.name === 'RunWorkflow:restoreToVSphere'), 30_000);
    const inTrace = () => otlp.spans.filter((s) => s.traceId === run0.traceId);
    const names = await until(
      'a span for every activity',
      () => {
        const n = new Set(inTrace().map((s) => s.name));
        return [...activityTypes].every((t) => n.has(`RunActivity:${t}`)) ? n : undefined;
      },
      30_000,
    );
    assert.ok(names.has('StartWorkflow:restoreToVSphere'), `the client's start span is in the trace (${[...names].join(', ')})`);
    for (const t of activityTypes) assert.ok(names.has(`StartActivity:${t}`), `StartActivity:${t} in the trace`);
    const byId = new Map(inTrace().map((s) => [s.spanId, s]));
    const roots = inTrace().filter((s) => !s.parentSpanId || !byId.has(s.parentSpanId));
    assert.deepEqual(
      roots.map((s) => s.name),
      ['StartWorkflow:restoreToVSphere'],
      'one root: the start of the restore',
    );

    const vs = await labVSphere(env.config);
    try {
      const vm = await vs.findVmByName(await vs.datacenter('DC0'), vmName);
      assert.ok(vm, 'the VM exists in vCenter');
      await vm.destroy();
    } finally {
      await vs.logout().catch(() => {});
    }
  });
  it('counts Azure uploads, reads the helper appliance lease, and counts a failed restore under its failure type', async () => {
    const vmName = `tmetrics${Date.now().toString(36).slice(-7)}`;
    // The helper is held from its attach until its detach, which the ARM simulator delays by 4 s here: a
    // window no scrape misses, however slow scrapes are under load (without it the hold can be shorter).
    await setFaults([{ kind: 'delay', method: 'POST', pathPattern: '/attachDetachDataDisks$', skip: 1, count: 1, delayMs: 4000 }]);
    const handle = await startAzureRestore(env.client, { restorePointId: env.demo['demo-linux'], vmName }, { taskQueue: env.taskQueue });
    let done = false;
    const result = handle.result().finally(() => (done = true));
    const uploadedDuring: number[] = [];
    let heldSeen = 0;
    let poweredOnSeen = 0;
    // The helper stays powered on for its idle timeout (5 s in the lab) after the restore releases it, and
    // is then powered off: scrapes go on until they have seen both, however slow a scrape under load is.
    let poweredOffAfter = false;
    let doneAt = 0;
    while (!done || (!poweredOffAfter && (doneAt === 0 || Date.now() - doneAt < 60_000))) {
      if (done && doneAt === 0) doneAt = Date.now();
      const text = await scrape(metricsUrl);
      if (!done) uploadedDuring.push(sampleValue(text, 'vmrestore_uploaded_bytes_total', { target: 'azure', transport: 'page-blob' }) ?? 0);
      if (!done) heldSeen = Math.max(heldSeen, sampleValue(text, 'vmrestore_lease_holders', { kind: 'helper' }) ?? 0);
      const on = sampleValue(text, 'vmrestore_appliance_powered_on', { kind: 'helper' }) ?? 0;
      poweredOnSeen = Math.max(poweredOnSeen, on);
      if (done && poweredOnSeen === 1 && on === 0) poweredOffAfter = true;
      await new Promise((r) => setTimeout(r, 250));
    }
    const r = await result;
    await clearFaults();
    const uploaded = r.disks.reduce((a, d) => a + d.bytesUploaded, 0);
    const text = await scrape(metricsUrl);
    assert.equal(sampleValue(text, 'vmrestore_uploaded_bytes_total', { target: 'azure', transport: 'page-blob' }), uploaded);
    assert.ok(
      uploadedDuring.some((v) => v > 0 && v < uploaded),
      `uploads seen moving (${uploadedDuring.join(', ')})`,
    );
    assert.equal(sampleValue(text, 'vmrestore_restores_total', { target: 'azure', outcome: 'completed' }), 1);
    // The helper's lease workflow outlives the restore: released, with the slots its size offers.
    const released = await scrapeUntil(metricsUrl, (t) => sampleValue(t, 'vmrestore_lease_holders', { kind: 'helper' }) === 0);
    assert.equal(sampleValue(released, 'vmrestore_lease_holders', { kind: 'helper' }), 0, 'no holder once the restore released the helper');
    assert.ok(sampleValue(released, 'vmrestore_lease_slots', { kind: 'helper' })! >= 1, 'the helper offers data-disk slots');
    assert.equal(sampleValue(released, 'vmrestore_lease_slots_in_use', { kind: 'helper' }), 0);
    assert.ok(heldSeen >= 1, 'a scrape during the restore saw the helper appliance held');
    assert.equal(poweredOnSeen, 1, 'a scrape saw the helper appliance powered on by its lease');
    assert.ok(poweredOffAfter, 'a later scrape saw the helper powered off once its idle timeout passed');

    const bad = await startAzureRestore(
      env.client,
      { restorePointId: env.demo['demo-linux'], vmName: 'bad name!' },
      { taskQueue: env.taskQueue },
    );
    await assert.rejects(bad.result());
    const failed = await scrapeUntil(
      metricsUrl,
      (t) => sampleValue(t, 'vmrestore_restores_total', { target: 'azure', outcome: 'failed' }) === 1,
    );
    assert.equal(
      sampleValue(failed, 'vmrestore_restores_total', { target: 'azure', outcome: 'failed', failure_type: 'InvalidRequest' }),
      1,
    );
    assert.equal(
      sampleValue(failed, 'vmrestore_activity_failures_total', { failure_type: 'InvalidRequest', retryable: 'false' }),
      1,
      'the refused request counted as a non-retryable activity failure',
    );
    assert.equal(sampleValue(failed, 'vmrestore_activity_retries_total', { failure_type: 'InvalidRequest' }) ?? 0, 0);
  });
});
