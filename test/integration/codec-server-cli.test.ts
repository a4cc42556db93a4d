import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { defaultPayloadConverter } from '@temporalio/common';
import { AesGcmCodec } from '../../src/client/codec';
import { post, toJsonPayload } from '../helpers/codec-http';

const keys = (entries: Record<string, Buffer>) => new Map(Object.entries(entries));
const payload = (v: unknown) => defaultPayloadConverter.toPayload(v);

describe('vmrestore codec-server (the CLI)', () => {
  it('creates and prints its token once, then reuses it; requests need it', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'codec-cli-'));
    const k = randomBytes(32);
    writeFileSync(path.join(dir, 'payload.key'), k.toString('base64'));
    const configFile = path.join(dir, 'vmrestore.config.json');
    writeFileSync(
      configFile,
      JSON.stringify({
        temporal: { uiUrl: 'http://ui.internal:8080', encryption: { keyId: 'k', keys: { k: { keyFile: path.join(dir, 'payload.key') } } } },
      }),
    );
    const start = async (): Promise<{ lines: string[]; url: string; stop: () => Promise<void> }> => {
      const child = spawn(process.execPath, [path.join(__dirname, '..', '..', 'bin', 'vmrestore.cjs'), 'codec-server', '--port', '0'], {
        env: { ...process.env, VMRESTORE_CONFIG: configFile, VMRESTORE_CODEC_TOKEN: '' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      for (let i = 0; i < 300 && !out.includes('Web UI codec endpoint'); i++) await new Promise((r) => setTimeout(r, 100));
      const url = /codec server at (http:\/\/\S+) for/.exec(out)?.[1];
      assert.ok(url, out);
      return {
        lines: out.trim().split('\n'),
        url,
        stop: async () => {
          child.kill('SIGTERM');
          await exited;
        },
      };
    };
    try {
      const first = await start();
      const token = /new bearer token \(shown once; stored in (.+)\): (\S+)$/.exec(
        first.lines.find((l) => l.startsWith('new bearer token'))!,
      )!;
      assert.equal(token[1], path.join(dir, 'codec-server.token'), 'next to the config file');
      assert.equal(readFileSync(token[1], 'utf8').trim(), token[2]);
      assert.ok(
        first.lines.some((l) => l.includes('for http://ui.internal:8080')),
        'CORS origin from temporal.uiUrl',
      );
      const [sealed] = await new AesGcmCodec(keys({ k }), 'k').encode([payload('via the CLI')]);
      const body = JSON.stringify({ payloads: [toJsonPayload(sealed)] });
      const port = new URL(first.url).port;
      assert.equal((await post(port, '/decode', body)).status, 401);
      const ok = await post(port, '/decode', body, { Authorization: `Bearer ${token[2]}` });
      assert.equal(ok.status, 200);
      assert.ok(Buffer.from((JSON.parse(ok.text) as { payloads: { data: string }[] }).payloads[0].data, 'base64').includes('via the CLI'));
      await first.stop();

      const second = await start();
      try {
        assert.ok(!second.lines.join('\n').includes(token[2]), 'the token is printed only when it is created');
        assert.ok(second.lines.some((l) => l === `bearer token from ${token[1]}`));
        assert.equal((await post(new URL(second.url).port, '/decode', body, { Authorization: `Bearer ${token[2]}` })).status, 200);
      } finally {
        await second.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
