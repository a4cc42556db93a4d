import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import {
  AccountSASPermissions,
  AccountSASResourceTypes,
  AccountSASServices,
  SASProtocol,
  StorageSharedKeyCredential,
  generateAccountSASQueryParameters,
} from '@azure/storage-blob';
import { temporal } from '@temporalio/proto';
import { AesGcmCodec, ENCODING } from '../../src/client/codec';
import type { AppConfig } from '../../src/config';
import type { AzureRestoreResult } from '../../src/domain/azure';
import type { DiskProgress } from '../../src/domain/progress';
import { readLabState } from '../../src/lab';
import { startVSphereRestore } from '../../src/client/restore';
import { armAdmin, labArm, labAzure, labContainer } from '../helpers/azure';
import { openTestEnv, ROOT, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { labVSphere } from '../helpers/vsphere';

const run = promisify(execFile);
const Payload = temporal.api.common.v1.Payload;
/** The classes decoded messages are instances of (the proto package builds its types by reflection). */
const messageClass = (t: unknown): abstract new (...args: never[]) => unknown =>
  (t as { ctor: abstract new (...args: never[]) => unknown }).ctor;
const PayloadMessage = messageClass(temporal.api.common.v1.Payload);
const FailureMessage = messageClass(temporal.api.failure.v1.Failure);
const HistoryResponse = temporal.api.workflowservice.v1.GetWorkflowExecutionHistoryResponse;
const KEY_ID = 'secrets-2026';
const SAS_ENV = 'VMRESTORE_TEST_BLOB_SAS';

let env: TestEnv;
let worker: WorkerProcess;
let dir: string;
let codec: AesGcmCodec;
let cliEnv: NodeJS.ProcessEnv;
/** What must never be readable: name → value. */
let secrets: Record<string, string>;
/** Every line the CLI and the worker printed during the run. */
const printed: { what: string; text: string }[] = [];
const vsphereVms: string[] = [];
const azureVms: string[] = [];
let plaintextMarker: string;
let plaintextWorkflowId: string;

/** The lab's config as a config file, as a real deployment writes one; the blob account is reached by SAS only. */
function writeConfigFile(config: AppConfig, file: string, keyFile: string): void {
  const { fromLab: _fromLab, source: _source, azure, temporal: t, ...rest } = config;
  const { blobConnectionString: _accountKeyConnectionString, ...azureRest } = azure!;
  const out = {
    ...rest,
    temporal: { ...t, encryption: { keyId: KEY_ID, keys: { [KEY_ID]: { keyFile } } } },
    azure: { ...azureRest, blobConnectionStringEnv: SAS_ENV },
  };
  writeFileSync(file, JSON.stringify(out, null, 2));
}

/** An account SAS over the lab's Azurite (blob service, containers and objects), as an operator would issue. */
function accountSas(accountName: string, accountKey: string): string {
  return generateAccountSASQueryParameters(
    {
      expiresOn: new Date(Date.now() + 2 * 3600_000),
      permissions: AccountSASPermissions.parse('rwdlacup'),
      services: AccountSASServices.parse('b').toString(),
      resourceTypes: AccountSASResourceTypes.parse('sco').toString(),
      protocol: SASProtocol.HttpsAndHttp,
    },
    new StorageSharedKeyCredential(accountName, accountKey),
  ).toString();
}

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let r: { code: number; stdout: string; stderr: string };
  try {
    const o = await run(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), ...args], { env: cliEnv, maxBuffer: 16 * 1024 * 1024 });
    r = { code: 0, stdout: o.stdout, stderr: o.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    r = { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
  printed.push({ what: `vmrestore ${args.join(' ')}`, text: r.stdout + r.stderr });
  return r;
}

function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
}

interface Found {
  payloads: temporal.api.common.v1.IPayload[];
  /** Search attribute values: plain by design, since the server indexes them. */
  indexed: temporal.api.common.v1.IPayload[];
  failures: temporal.api.failure.v1.IFailure[];
}

/** Every Payload and Failure message object inside a decoded protobuf value. */
function walk(value: unknown, found: Found, inSearchAttributes = false): void {
  if (!value || typeof value !== 'object' || ArrayBuffer.isView(value)) return;
  if (value instanceof PayloadMessage) {
    (inSearchAttributes ? found.indexed : found.payloads).push(value as temporal.api.common.v1.IPayload);
    return;
  }
  if (value instanceof FailureMessage) found.failures.push(value as temporal.api.failure.v1.IFailure);
  for (const [key, child] of Object.entries(value)) walk(child, found, inSearchAttributes || key === 'searchAttributes');
}

interface StoredHistory {
  workflowId: string;
  runId: string;
  type: string;
  /** The history exactly as the server returns it without the key (protobuf bytes of every page). */
  raw: Buffer;
  /** The same history's payloads opened with the key, for what the payloads themselves carry. */
  decoded: Buffer;
  found: Found;
}

/** Every workflow on the test's task queue (restores, lease workflows, every run), fetched raw from the server. */
async function storedHistories(): Promise<StoredHistory[]> {
  const out: StoredHistory[] = [];
  // Listed through the raw service too: the client's list would decode each run's (sealed) memo.
  const runs: { workflowId: string; runId: string; type: string }[] = [];
  let listToken: Uint8Array | undefined;
  do {
    const page = await env.client.workflowService.listWorkflowExecutions({
      namespace: env.config.temporal.namespace,
      query: `TaskQueue = '${env.taskQueue}'`,
      nextPageToken: listToken,
    });
    for (const e of page.executions ?? [])
      runs.push({ workflowId: e.execution!.workflowId!, runId: e.execution!.runId!, type: e.type?.name ?? '' });
    listToken = page.nextPageToken?.length ? page.nextPageToken : undefined;
  } while (listToken);
  for (const w of runs) {
    const pages: Buffer[] = [];
    const found: Found = { payloads: [], indexed: [], failures: [] };
    let nextPageToken: Uint8Array | undefined;
    do {
      const res = await env.client.workflowService.getWorkflowExecutionHistory({
        namespace: env.config.temporal.namespace,
        execution: { workflowId: w.workflowId, runId: w.runId },
        nextPageToken,
      });
      pages.push(Buffer.from(HistoryResponse.encode(res).finish()));
      // Patch markers (`patched()`) are written by the SDK's core as plain JSON naming the patch id: not
      // application data, so not expected to be sealed. Their bytes are still in the raw scan.
      walk({ events: (res.history?.events ?? []).filter((e) => e.markerRecordedEventAttributes?.markerName !== 'core_patch') }, found);
      nextPageToken = res.nextPageToken?.length ? res.nextPageToken : undefined;
    } while (nextPageToken);
    const opened = await codec.decode(
      [...found.payloads, ...found.indexed].map((p) => ({ metadata: p.metadata ?? {}, data: p.data ?? new Uint8Array() })),
    );
    const decoded = Buffer.concat(opened.map((p) => Buffer.from(Payload.encode(p).finish())));
    out.push({ workflowId: w.workflowId, runId: w.runId, type: w.type, raw: Buffer.concat(pages), decoded, found });
  }
  return out;
}

/** Places where a needle occurs: "where: name". */
function scan(places: { where: string; bytes: Buffer }[], needles: Record<string, string>): string[] {
  const hits: string[] = [];
  for (const { where, bytes } of places)
    for (const [name, value] of Object.entries(needles)) if (bytes.includes(value)) hits.push(`${where}: ${name}`);
  return hits;
}

describe('secrets stay secret: an encrypted run through the CLI leaves no credential in history or output', () => {
  before(async () => {
    env = await openTestEnv('secrets');
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmrs-secrets-'));
    const keyFile = path.join(dir, 'payload.key');
    const key = randomBytes(32).toString('base64');
    writeFileSync(keyFile, key, { mode: 0o600 });
    codec = new AesGcmCodec(new Map([[KEY_ID, Buffer.from(key, 'base64')]]), KEY_ID);
    const lab = readLabState();
    const sas = accountSas(lab.blob!.accountName, lab.blob!.accountKey);
    const sig = new URLSearchParams(sas).get('sig')!;
    const configFile = path.join(dir, 'vmrestore.config.json');
    writeConfigFile(env.config, configFile, keyFile);
    cliEnv = {
      ...process.env,
      VMRESTORE_CONFIG: configFile,
      VMRESTORE_TASK_QUEUE: env.taskQueue,
      [SAS_ENV]: `BlobEndpoint=${lab.blob!.endpoint};SharedAccessSignature=${sas}`,
    };
    worker = await startWorkerProcess(env.taskQueue, { VMRESTORE_CONFIG: configFile, [SAS_ENV]: cliEnv[SAS_ENV] });
    secrets = {
      'vCenter password': readFileSync(lab.vsphere!.passwordFile, 'utf8').trim(),
      'Azurite storage key': lab.blob!.accountKey,
      'ARM client secret': readFileSync(labAzure().clientSecretFile, 'utf8').trim(),
      'SAS signature': sig,
      'SAS signature (URL-encoded)': encodeURIComponent(sig),
      'payload encryption key': key,
    };
    for (const [name, value] of Object.entries(secrets))
      assert.ok(value.length >= 12, `${name} is a real secret (${value.length} characters)`);
  });

  after(async () => {
    await worker?.stop();
    if (worker) printed.push({ what: 'worker', text: worker.output() });
    const vs = env && (await labVSphere(env.config).catch(() => undefined));
    if (vs) {
      const dc = await vs.datacenter('DC0');
      for (const name of vsphereVms) await (await vs.findVmByName(dc, name).catch(() => undefined))?.destroy().catch(() => {});
      await vs.logout().catch(() => {});
    }
    const a = labAzure();
    const arm = labArm();
    for (const name of azureVms) {
      await arm.compute.virtualMachines.delete(a.resourceGroup, name).catch(() => {});
      await arm.network.networkInterfaces.beginDeleteAndWait(a.resourceGroup, `${name}-nic`).catch(() => {});
      await arm.compute.disks.delete(a.resourceGroup, `${name}-osdisk`).catch(() => {});
    }
    await env?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('restore vsphere --wait works with encryption on, and status reads the encrypted disk heartbeats mid-restore', async () => {
    const vmName = `t-sec-${Date.now().toString(36)}`;
    vsphereVms.push(vmName);
    const args = ['restore', 'vsphere', '--restore-point', env.demo['demo-thick'], '--vm-name', vmName];
    const child = spawn(
      process.execPath,
      [path.join(ROOT, 'bin', 'vmrestore.cjs'), ...args, '--transport', 'direct-nas', '--throttle-mbps', '4', '--wait'],
      { env: cliEnv, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    const exited = new Promise<number>((resolve) => child.once('exit', (code) => resolve(code ?? -1)));
    let workflowId: string | undefined;
    for (let i = 0; i < 120 && !workflowId; i++) {
      workflowId = /started (\S+)/.exec(out)?.[1];
      if (!workflowId) await new Promise((r) => setTimeout(r, 250));
    }
    assert.ok(workflowId, `the CLI printed the workflow id:\n${out}`);

    // While it writes: `status --json` decodes the writers' sealed heartbeats into live bytes.
    let live: DiskProgress | undefined;
    for (let i = 0; i < 60 && !live; i++) {
      const s = await cli('status', workflowId, '--json');
      assert.equal(s.code, 0, `status failed with encryption on:\n${s.stderr}${s.stdout}`);
      const st = lastJson(s.stdout) as { status: string; disks: DiskProgress[] };
      if (st.status !== 'RUNNING') break;
      live = st.disks.find((d) => d.state === 'writing' && d.bytesDone > 0 && d.bytesDone < d.bytesTotal);
    }
    assert.ok(live, 'status showed a disk mid-write with its bytes from the sealed heartbeat');
    const text = await cli('status', workflowId);
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, new RegExp(`${workflowId}: (RUNNING|COMPLETED)`));

    assert.equal(await exited, 0, out);
    printed.push({ what: `vmrestore ${args.join(' ')} --wait`, text: out });
    assert.match(out, /completed/);
    const done = await cli('status', workflowId, '--json');
    const final = lastJson(done.stdout) as { status: string; result: { vmName: string; disks: unknown[] } };
    assert.equal(final.status, 'COMPLETED');
    assert.equal(final.result.vmName, vmName, 'the result decodes through the codec');
    assert.equal(final.result.disks.length, 2);
  });

  it('restore azure --wait --json with a SAS connection string: blob URLs carry no SAS in the result or at ARM', async () => {
    const vmName = `tsec${Date.now().toString(36).slice(-7)}`;
    azureVms.push(vmName);
    const r = await cli('restore', 'azure', '--restore-point', env.demo['demo-linux'], '--vm-name', vmName, '--wait', '--json');
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const out = lastJson(r.stdout) as { status: string; result: AzureRestoreResult };
    assert.equal(out.status, 'COMPLETED');
    const blobUrl = out.result.disks[0].blobUrl;
    assert.match(blobUrl, /^http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1\/vhds\/.+\/disk0\.vhd$/, 'a plain blob URL');
    // The upload went through the SAS, and the blob is there.
    const blobName = decodeURIComponent(new URL(blobUrl).pathname.split('/').slice(3).join('/'));
    assert.ok((await labContainer().getPageBlobClient(blobName).getProperties()).contentLength! > 0);
    // ARM got the plain URL plus the storage account id, as managed-disk import takes them.
    const a = labAzure();
    const disk = await labArm().compute.disks.get(a.resourceGroup, `${vmName}-osdisk`);
    assert.equal(disk.creationData?.sourceUri, blobUrl);
    assert.equal(disk.creationData?.storageAccountId, a.storageAccountId);
    // What ARM keeps of this restore: every mention of its blob is the plain URL. (The simulator holds the
    // storage account's key itself, as Azure does, and other runs' records are not this test's to judge.)
    const mentions: string[] = [];
    const collect = (v: unknown): void => {
      if (typeof v === 'string') {
        if (v.includes(new URL(blobUrl).pathname)) mentions.push(v);
      } else if (v && typeof v === 'object') for (const x of Object.values(v)) collect(x);
    };
    collect(await armAdmin('GET', '/_admin/state'));
    assert.ok(mentions.length >= 1, 'ARM recorded the import');
    for (const m of mentions) assert.ok(!m.includes('?') && !m.includes('sig='), `ARM holds ${m}`);
  });

  it('a failed restore: the failure text is sealed in history and readable through the CLI', async () => {
    const missing = `rp-20990101000000-${randomBytes(3).toString('hex')}`;
    const r = await cli(
      'restore',
      'vsphere',
      '--restore-point',
      missing,
      '--vm-name',
      `t-sec-fail-${Date.now().toString(36)}`,
      '--wait',
      '--json',
    );
    assert.equal(r.code, 1, r.stderr + r.stdout);
    const out = lastJson(r.stdout) as { workflowId: string; status: string; error: string };
    assert.equal(out.status, 'FAILED');
    assert.match(out.error, new RegExp(missing), 'the client decodes the real message');
    const histories = (await storedHistories()).filter((h) => h.workflowId === out.workflowId);
    assert.equal(histories.length, 1);
    const [h] = histories;
    assert.ok(h.found.failures.length >= 2, `the activity and the workflow failures are in history (${h.found.failures.length})`);
    for (const f of h.found.failures) {
      assert.equal(f.message, 'Encoded failure');
      assert.equal(f.stackTrace ?? '', '');
      assert.equal(Buffer.from(f.encodedAttributes!.metadata!.encoding!).toString(), ENCODING);
    }
    assert.ok(!h.raw.includes(missing), 'the restore point id (input, failure message) is nowhere in plain text');
    assert.ok(h.decoded.includes(missing), 'but it is in the sealed failure attributes');
  });

  it('a plaintext control run: the scanner finds what an unencrypted client stores', async () => {
    plaintextMarker = `plaintext-marker-${randomBytes(6).toString('hex')}`;
    // The test's own client has no codec, so this request goes into history as plain JSON.
    const handle = await startVSphereRestore(
      env.client,
      { restorePointId: plaintextMarker, vmName: `t-sec-plain-${Date.now().toString(36)}` },
      { taskQueue: env.taskQueue },
    );
    plaintextWorkflowId = handle.workflowId;
    await assert.rejects(handle.result());
  });

  it('no history of the run (every workflow, every event, raw and decoded) holds a secret or a SAS signature', async (t) => {
    const histories = await storedHistories();
    const types = new Set(histories.map((h) => h.type));
    for (const t of ['restoreToVSphere', 'restoreToAzure', 'resourceLease']) assert.ok(types.has(t), `a ${t} history was scanned`);
    const bytes = histories.reduce((n, h) => n + h.raw.length, 0);
    assert.ok(bytes > 10_000, `histories were read (${histories.length} runs, ${bytes} bytes)`);

    // The scanner works: it finds the control run's plaintext, and each secret planted in a history event.
    const places = histories.flatMap((h) => [
      { where: `${h.workflowId} (raw)`, bytes: h.raw },
      { where: `${h.workflowId} (decoded)`, bytes: h.decoded },
    ]);
    assert.deepEqual(scan(places, { marker: plaintextMarker }), [
      `${plaintextWorkflowId} (raw): marker`,
      `${plaintextWorkflowId} (decoded): marker`,
    ]);
    for (const [name, value] of Object.entries({ ...secrets, 'sig=': 'sig=' })) {
      const planted = temporal.api.history.v1.History.encode({
        events: [
          {
            activityTaskFailedEventAttributes: {
              failure: { message: `upload failed at http://x/c/b?sv=1&${value}&z`, source: 'TypeScriptSDK' },
            },
          },
          {
            activityTaskCompletedEventAttributes: {
              result: { payloads: [{ metadata: {}, data: Buffer.from(JSON.stringify({ v: value })) }] },
            },
          },
        ],
      }).finish();
      assert.deepEqual(scan([{ where: 'planted', bytes: Buffer.from(planted) }], { [name]: value }), [`planted: ${name}`]);
    }

    // The encrypted run: every payload sealed (search attributes aside, which the server indexes), every failure encoded.
    let sealed = 0;
    for (const h of histories.filter((x) => x.workflowId !== plaintextWorkflowId)) {
      for (const p of h.found.payloads) {
        assert.equal(
          Buffer.from(p.metadata?.encoding ?? new Uint8Array()).toString(),
          ENCODING,
          `${h.workflowId}: a payload in plain text`,
        );
        sealed++;
      }
      for (const f of h.found.failures) assert.equal(f.message, 'Encoded failure', `${h.workflowId}: failure text is sealed`);
    }
    assert.ok(sealed > 20, `${sealed} sealed payloads`);

    const failures = histories.reduce((n, h) => n + h.found.failures.length, 0);
    t.diagnostic(
      `scanned ${histories.length} runs (${[...types].join(', ')}), ${bytes} bytes raw, ${sealed} sealed payloads, ${failures} encoded failures`,
    );
    const hits = scan(places, { ...secrets, 'sig=': 'sig=' });
    assert.deepEqual(hits, [], `secrets found in history:\n${hits.join('\n')}`);

    await worker.stop();
    printed.push({ what: 'worker', text: worker.output() });
    const outputHits = scan(
      printed.map((p) => ({ where: p.what, bytes: Buffer.from(p.text) })),
      { ...secrets, 'sig=': 'sig=' },
    );
    assert.deepEqual(outputHits, [], `secrets found in CLI or worker output:\n${outputHits.join('\n')}`);
    assert.ok(printed.length >= 6, 'CLI and worker output was scanned');
  });
});
