import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { ApplicationFailure, defaultPayloadConverter } from '@temporalio/common';
import {
  decodeOptionalFailureToOptionalError,
  encodeErrorToFailure,
  loadDataConverter,
} from '@temporalio/common/lib/internal-non-workflow';
import { temporal } from '@temporalio/proto';
import {
  AesGcmCodec,
  CODEC_SERVER_MAX_BODY,
  ENCODING,
  KEY_ID_METADATA,
  loadCodecServerToken,
  startCodecServer,
} from '../../src/client/codec';
import { toFailure } from '../../src/activities/failures';
import { blobUrlForRecord, containsSas, redactSasInText } from '../../src/azure/blob-url';
import { applyEnvOverrides, parseConfig } from '../../src/config';
import { FailureType, RestoreError } from '../../src/domain/errors';
import { dataConverterFor } from '../../src/client/restore';
import { post, toJsonPayload } from '../helpers/codec-http';

const keys = (entries: Record<string, Buffer>) => new Map(Object.entries(entries));
const payload = (v: unknown) => defaultPayloadConverter.toPayload(v);
const value = (p: Parameters<typeof defaultPayloadConverter.fromPayload>[0]) => defaultPayloadConverter.fromPayload(p);
const TOKEN = 'test-token-5d41402abc4b2a76b9719d911017c592';
describe('AES-GCM payload codec', () => {
  const k1 = randomBytes(32);
  const k2 = randomBytes(32);

  it('seals payloads whole, names the key, and opens them again', async () => {
    const codec = new AesGcmCodec(keys({ k1 }), 'k1');
    const input = [payload({ vmName: 'finance-db01', secret: 'plaintext-marker' }), payload(42)];
    const sealed = await codec.encode(input);
    for (const p of sealed) {
      assert.equal(Buffer.from(p.metadata!.encoding!).toString(), ENCODING);
      assert.equal(Buffer.from(p.metadata![KEY_ID_METADATA]!).toString(), 'k1');
      assert.ok(!Buffer.from(p.data!).includes('plaintext-marker'), 'no plaintext in the sealed payload');
    }
    const opened = await codec.decode(sealed);
    assert.deepEqual(value(opened[0]), { vmName: 'finance-db01', secret: 'plaintext-marker' });
    assert.equal(value(opened[1]), 42);
    // A fresh IV per payload: the same value never seals to the same bytes.
    const again = await codec.encode([input[1]]);
    assert.ok(!Buffer.from(again[0].data!).equals(Buffer.from(sealed[1].data!)));
  });

  it('reads history sealed under an older key after rotation, refuses unknown keys and tampering', async () => {
    const old = await new AesGcmCodec(keys({ k1 }), 'k1').encode([payload('before rotation')]);
    const rotated = new AesGcmCodec(keys({ k1, k2 }), 'k2');
    assert.equal(value((await rotated.decode(old))[0]), 'before rotation');
    assert.equal(Buffer.from((await rotated.encode([payload(1)]))[0].metadata![KEY_ID_METADATA]!).toString(), 'k2');
    await assert.rejects(new AesGcmCodec(keys({ k2 }), 'k2').decode(old), /encrypted with key 'k1', which is not configured/);
    const tampered = { ...old[0], data: Buffer.from(old[0].data!) };
    tampered.data[20] ^= 1;
    await assert.rejects(rotated.decode([tampered]), /unable to authenticate|auth/i);
    // Plain payloads (written before encryption was turned on) pass through.
    assert.equal(value((await rotated.decode([payload('plain')]))[0]), 'plain');
  });

  it('serves /encode and /decode to the Web UI with CORS for its origin only', async () => {
    const codec = new AesGcmCodec(keys({ k1 }), 'k1');
    const server = await startCodecServer(codec, { allowOrigins: ['http://localhost:8233'], token: TOKEN });
    try {
      const [sealed] = await codec.encode([payload({ phase: 'completed' })]);
      const body = JSON.stringify({ payloads: [toJsonPayload(sealed)] });
      const res = await fetch(`${server.url}/decode`, {
        method: 'POST',
        headers: {
          'Content-Type': 'application/json',
          Origin: 'http://localhost:8233',
          'X-Namespace': 'default',
          Authorization: `Bearer ${TOKEN}`,
        },
        body,
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('access-control-allow-origin'), 'http://localhost:8233');
      const out = (await res.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
      assert.equal(Buffer.from(out.payloads[0].metadata.encoding, 'base64').toString(), 'json/plain');
      assert.deepEqual(JSON.parse(Buffer.from(out.payloads[0].data, 'base64').toString()), { phase: 'completed' });
      const preflight = await fetch(`${server.url}/decode`, { method: 'OPTIONS', headers: { Origin: 'http://localhost:8233' } });
      assert.equal(preflight.status, 204);
      assert.match(preflight.headers.get('access-control-allow-headers') ?? '', /Authorization/);
      const foreign = await fetch(`${server.url}/decode`, { method: 'OPTIONS', headers: { Origin: 'http://evil.example' } });
      assert.equal(foreign.status, 403);
      assert.equal(foreign.headers.get('access-control-allow-origin'), null);
      const foreignPost = await fetch(`${server.url}/decode`, {
        method: 'POST',
        headers: { Origin: 'http://evil.example', Authorization: `Bearer ${TOKEN}` },
        body,
      });
      assert.equal(foreignPost.status, 403, 'a page on another origin cannot use it even with the token');
      assert.equal((await fetch(`${server.url}/other`, { method: 'POST' })).status, 404);
    } finally {
      await server.close();
    }
  });

  it('codec server: 401 without the token, 421 for a foreign Host, 413 for a huge body; the token also works in the path', async () => {
    const codec = new AesGcmCodec(keys({ k1 }), 'k1');
    const server = await startCodecServer(codec, { allowOrigins: [], token: TOKEN, allowedHosts: ['codec.internal'] });
    try {
      const { port } = new URL(server.url);
      const [sealed] = await codec.encode([payload('secret value')]);
      const body = JSON.stringify({ payloads: [toJsonPayload(sealed)] });
      const auth = { Authorization: `Bearer ${TOKEN}` };

      const none = await post(port, '/decode', body);
      assert.equal(none.status, 401);
      assert.match(none.headers['www-authenticate'] ?? '', /^Bearer/);
      assert.ok(!none.text.includes('secret value'));
      assert.equal((await post(port, '/decode', body, { Authorization: `Bearer ${TOKEN}x` })).status, 401);
      assert.equal((await post(port, '/decode', body, { Authorization: TOKEN })).status, 401, 'not a Bearer header');
      assert.equal((await post(port, '/t/wrong-token-0123456789/decode', body)).status, 401);

      const rebound = await post(port, '/decode', body, { ...auth, Host: `attacker.example:${port}` });
      assert.equal(rebound.status, 421);
      assert.ok(!rebound.text.includes('secret value'));
      assert.equal((await post(port, '/decode', body, { ...auth, Host: `codec.internal:${port}` })).status, 200);
      assert.equal((await post(port, '/decode', body, { ...auth, Host: `localhost:${port}` })).status, 200);

      const huge = JSON.stringify({ payloads: [{ metadata: {}, data: 'A'.repeat(CODEC_SERVER_MAX_BODY) }] });
      const big = await post(port, '/decode', huge, auth);
      assert.equal(big.status, 413);
      // Chunked, without a Content-Length up front: cut off while streaming.
      const bigChunked = await post(port, '/decode', huge, { ...auth, 'Transfer-Encoding': 'chunked' });
      assert.equal(bigChunked.status, 413);

      const good = await post(port, '/decode', body, auth);
      assert.equal(good.status, 200);
      const out = JSON.parse(good.text) as { payloads: { data: string }[] };
      assert.equal(JSON.parse(Buffer.from(out.payloads[0].data, 'base64').toString()), 'secret value');
      const viaPath = await post(port, `/t/${TOKEN}/decode`, body);
      assert.equal(viaPath.status, 200, 'the Web UI form: the token in the endpoint path');
      assert.equal((await post(port, `/t/${TOKEN}/encode`, JSON.stringify({ payloads: [] }))).status, 200);
      assert.equal((await post(port, '/decode', '{"nope": 1}', auth)).status, 400);
    } finally {
      await server.close();
    }
    assert.throws(() => startCodecServer(codec, { allowOrigins: [], token: 'short' }), /at least 16 characters/);
  });

  it('codec server token: generated once into a private file, then reused; the environment wins', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'codec-token-'));
    try {
      const file = path.join(dir, 'codec-server.token');
      const first = loadCodecServerToken(file, {});
      assert.equal(first.created, true);
      assert.ok(first.token.length >= 40);
      assert.equal(statSync(file).mode & 0o777, 0o600);
      const again = loadCodecServerToken(file, {});
      assert.deepEqual(again, { token: first.token, created: false, source: file });
      const env = loadCodecServerToken(file, { VMRESTORE_CODEC_TOKEN: 'from-the-environment-123' });
      assert.deepEqual(env, { token: 'from-the-environment-123', created: false, source: 'VMRESTORE_CODEC_TOKEN' });
      assert.throws(() => loadCodecServerToken(file, { VMRESTORE_CODEC_TOKEN: 'short' }), /VMRESTORE_CODEC_TOKEN must be at least 16/);
      chmodSync(file, 0o644);
      assert.throws(() => loadCodecServerToken(file, {}), /readable by others \(mode 644\): chmod 600 it/);
      assert.throws(() => loadCodecServerToken(path.join(dir, 'missing', 'token'), {}), /cannot create codec server token file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('with encryption on, failure messages and stack traces are sealed too', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'codec-fail-'));
    try {
      writeFileSync(path.join(dir, 'key'), k1.toString('base64'));
      const base = { vsphere: { profiles: { p: { url: 'https://vc/sdk', username: 'u', passwordEnv: 'P' } } } };
      const cfg = applyEnvOverrides(parseConfig(base, 't', '/'), { VMRESTORE_ENCRYPTION_KEY_FILE: path.join(dir, 'key') });
      const converter = loadDataConverter(dataConverterFor(cfg));
      const failure = await encodeErrorToFailure(converter, ApplicationFailure.create({ message: 'vCenter said no: hunter2', type: 'X' }));
      assert.equal(failure.message, 'Encoded failure');
      assert.equal(failure.stackTrace, '');
      assert.equal(Buffer.from(failure.encodedAttributes!.metadata!.encoding!).toString(), ENCODING);
      const wire = Buffer.from(temporal.api.failure.v1.Failure.encode(failure).finish());
      assert.ok(!wire.includes('hunter2'), 'the message is not on the wire');
      assert.ok(!wire.includes('codec.test'), 'nor is the stack trace');
      const back = await decodeOptionalFailureToOptionalError(converter, failure);
      assert.equal(back?.message, 'vCenter said no: hunter2');
      assert.match(back?.stack ?? '', /codec\.test/);
      // Without encryption the default converter (plain text) stays.
      assert.equal(dataConverterFor(parseConfig(base, 't', '/')), undefined);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('is configured by key files or variables, never literal keys', () => {
    const base = { vsphere: { profiles: { p: { url: 'https://vc/sdk', username: 'u', passwordEnv: 'P' } } } };
    const enc = { keyId: 'k2', keys: { k1: { keyFile: '/etc/k1' }, k2: { keyEnv: 'VMRESTORE_KEY2' } } };
    assert.deepEqual(parseConfig({ ...base, temporal: { encryption: enc } }, 't', '/').temporal.encryption, {
      keyId: 'k2',
      keys: { k1: { keyFile: '/etc/k1', keyEnv: undefined }, k2: { keyFile: undefined, keyEnv: 'VMRESTORE_KEY2' } },
    });
    const bad = (encryption: unknown) => () => parseConfig({ ...base, temporal: { encryption } }, 't', '/');
    assert.throws(bad({ keyId: 'x', keys: { x: { key: 'abc' } } }), /temporal\.encryption\.keys\.x\.key: literal keys are not accepted/);
    assert.throws(bad({ keyId: 'y', keys: { x: { keyEnv: 'E' } } }), /temporal\.encryption\.keyId: 'y' is not one of the keys/);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'codec-'));
    try {
      const file = path.join(dir, 'key');
      writeFileSync(file, k1.toString('base64'));
      const cfg = applyEnvOverrides(parseConfig(base, 't', '/'), { VMRESTORE_ENCRYPTION_KEY_FILE: file });
      assert.equal(cfg.temporal.encryption?.keyId, 'default');
      assert.ok(AesGcmCodec.fromConfig(cfg.temporal.encryption!));
      writeFileSync(file, 'c2hvcnQ=');
      assert.throws(() => AesGcmCodec.fromConfig(cfg.temporal.encryption!), /must be 32 bytes/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('SAS tokens in blob URLs and error text', () => {
  const sas = 'sv=2026-04-06&ss=b&srt=sco&sp=rwdlacup&se=2026-12-01T09%3A54%3A30Z&sig=nn49%2F1rg6Uhv2bm9b%2BX0%3D';
  const url = `http://127.0.0.1:10000/devstoreaccount1/vhds/r1/disk0.vhd?${sas}`;

  it('strips the query string from a blob URL', () => {
    assert.equal(blobUrlForRecord(url), 'http://127.0.0.1:10000/devstoreaccount1/vhds/r1/disk0.vhd');
    assert.equal(blobUrlForRecord('https://acct.blob.core.windows.net/c/x.vhd'), 'https://acct.blob.core.windows.net/c/x.vhd');
  });

  it('removes SAS tokens from free text, from errors down their cause chain, and from failures', () => {
    const text = `PUT ${url} failed; connection string BlobEndpoint=http://h/a;SharedAccessSignature=${sas}; retry with sig=abc`;
    const clean = redactSasInText(text);
    assert.ok(!/sig=/.test(clean), clean);
    assert.ok(!clean.includes('nn49'), clean);
    assert.match(clean, /PUT http:\/\/127\.0\.0\.1:10000\/devstoreaccount1\/vhds\/r1\/disk0\.vhd failed/);
    assert.equal(containsSas(text), true);
    assert.equal(containsSas(clean), false);

    const cause = new Error(`GET ${url}: 403`);
    const err = Object.assign(new Error(`upload of ${url} failed`, { cause }), { name: 'RestError', statusCode: 403 });
    const out = toFailure(err) as Error;
    assert.equal(out, err, 'other errors keep their type');
    assert.ok(!out.message.includes('sig=') && !(out.stack ?? '').includes('sig=') && !cause.message.includes('sig='));
    assert.equal((out as Error & { statusCode: number }).statusCode, 403);
    const typed = toFailure(new RestoreError(FailureType.AzureFault, `blob ${url} is gone`)) as ApplicationFailure;
    assert.equal(typed.type, FailureType.AzureFault);
    assert.equal(typed.message, 'blob http://127.0.0.1:10000/devstoreaccount1/vhds/r1/disk0.vhd is gone');
  });
});
