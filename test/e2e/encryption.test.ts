import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client } from '@temporalio/client';
import type { temporal } from '@temporalio/proto';
import { ENCODING } from '../../src/client/codec';
import { applyEnvOverrides } from '../../src/config';
import { dataConverterFor, startVSphereRestore } from '../../src/client/restore';
import type { VSphereClient } from '../../src/vsphere';
import { openTestEnv, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { labVSphere } from '../helpers/vsphere';

let env: TestEnv;
let worker: WorkerProcess;
let vs: VSphereClient;
let dir: string;

/** Every payload in a history event, found by walking its attributes. */
function payloadsIn(value: unknown, out: temporal.api.common.v1.IPayload[] = []): temporal.api.common.v1.IPayload[] {
  if (!value || typeof value !== 'object') return out;
  if (ArrayBuffer.isView(value)) return out;
  const v = value as Record<string, unknown>;
  if ('payloads' in v && Array.isArray(v.payloads)) out.push(...(v.payloads as temporal.api.common.v1.IPayload[]));
  for (const [k, child] of Object.entries(v)) if (k !== 'payloads') payloadsIn(child, out);
  return out;
}

describe('payload encryption (AES-GCM codec) on a real restore', () => {
  before(async () => {
    env = await openTestEnv('encryption');
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmrs-enc-'));
    writeFileSync(path.join(dir, 'key'), randomBytes(32).toString('base64'));
    worker = await startWorkerProcess(env.taskQueue, {
      VMRESTORE_ENCRYPTION_KEY_FILE: path.join(dir, 'key'),
      VMRESTORE_ENCRYPTION_KEY_ID: 'lab-2026',
    });
    vs = await labVSphere(env.config);
  });
  after(async () => {
    await worker?.stop();
    await vs?.logout().catch(() => {});
    await env?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('history holds only sealed payloads; a client with the key reads the result', async () => {
    const config = applyEnvOverrides(env.config, {
      VMRESTORE_ENCRYPTION_KEY_FILE: path.join(dir, 'key'),
      VMRESTORE_ENCRYPTION_KEY_ID: 'lab-2026',
    });
    const sealedClient = new Client({
      connection: env.connection,
      namespace: config.temporal.namespace,
      dataConverter: dataConverterFor(config),
    });
    const vmName = `t-enc-${Date.now().toString(36)}`;
    const handle = await startVSphereRestore(
      sealedClient,
      { restorePointId: env.demo['demo-thick'], vmName, transport: 'nbd' },
      { taskQueue: env.taskQueue },
    );
    const result = await handle.result();
    assert.equal(result.vmName, vmName);
    assert.equal(result.disks.length, 2);

    // What the server stores, read without the key.
    const history = await env.client.workflow.getHandle(handle.workflowId).fetchHistory();
    // Patch markers (`patched()`) are written by the SDK's core as plain JSON naming the patch id and are not
    // application data; everything else must be sealed.
    const isPatchMarker = (e: temporal.api.history.v1.IHistoryEvent) => e.markerRecordedEventAttributes?.markerName === 'core_patch';
    const payloads = history.events!.filter((e) => !isPatchMarker(e)).flatMap((e) => payloadsIn(e));
    assert.ok(payloads.length >= 5, `found ${payloads.length} payloads`);
    for (const p of payloads) {
      assert.equal(Buffer.from(p.metadata!.encoding!).toString(), ENCODING);
      assert.equal(Buffer.from(p.metadata!['encryption-key-id']!).toString(), 'lab-2026');
      assert.ok(!Buffer.from(p.data!).includes(vmName), 'the VM name is not readable in history');
    }
    const dc = await vs.datacenter('DC0');
    await (await vs.findVmByName(dc, vmName))?.destroy();
  });
});
