import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { defaultPayloadConverter } from '@temporalio/common';
import { AesGcmCodec, ENCODING, KEY_ID_METADATA, startCodecServer } from '../../src/codec';
import { applyEnvOverrides, parseConfig } from '../../src/config';

const keys = (entries: Record<string, Buffer>) => new Map(Object.entries(entries));
const payload = (v: unknown) => defaultPayloadConverter.toPayload(v);
const value = (p: Parameters<typeof defaultPayloadConverter.fromPayload>[0]) => defaultPayloadConverter.fromPayload(p);

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
    const server = await startCodecServer(codec, { allowOrigins: ['http://localhost:8233'] });
    try {
      const [sealed] = await codec.encode([payload({ phase: 'completed' })]);
      const body = {
        payloads: [
          {
            metadata: Object.fromEntries(Object.entries(sealed.metadata!).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
            data: Buffer.from(sealed.data!).toString('base64'),
          },
        ],
      };
      const res = await fetch(`${server.url}/decode`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Origin: 'http://localhost:8233', 'X-Namespace': 'default' },
        body: JSON.stringify(body),
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('access-control-allow-origin'), 'http://localhost:8233');
      const out = (await res.json()) as { payloads: { metadata: Record<string, string>; data: string }[] };
      assert.equal(Buffer.from(out.payloads[0].metadata.encoding, 'base64').toString(), 'json/plain');
      assert.deepEqual(JSON.parse(Buffer.from(out.payloads[0].data, 'base64').toString()), { phase: 'completed' });
      const foreign = await fetch(`${server.url}/decode`, { method: 'OPTIONS', headers: { Origin: 'http://evil.example' } });
      assert.equal(foreign.headers.get('access-control-allow-origin'), null);
      assert.equal((await fetch(`${server.url}/other`, { method: 'POST' })).status, 404);
    } finally {
      await server.close();
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
