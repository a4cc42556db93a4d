import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { FailureType, RestoreError } from './domain/errors';

export const ENCODING = 'binary/encrypted';
export const KEY_ID_METADATA = 'encryption-key-id';
export const CIPHER_METADATA = 'encryption-cipher';
const CIPHER = 'AES256-GCM';
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** Where the payload encryption keys come from: 32-byte keys, base64, in files or environment variables. */
export interface EncryptionConfig {
  /** Key new payloads are encrypted with. */
  keyId: string;
  /** Every key that may still be needed to decrypt history (the active one included). */
  keys: Record<string, { keyFile?: string; keyEnv?: string }>;
}

const text = (s: string): Uint8Array => Buffer.from(s, 'utf8');

function loadKey(id: string, src: { keyFile?: string; keyEnv?: string }, env: NodeJS.ProcessEnv): Buffer {
  let b64: string | undefined;
  if (src.keyFile) {
    try {
      b64 = readFileSync(src.keyFile, 'utf8').trim();
    } catch (err) {
      throw new RestoreError(FailureType.Configuration, `encryption key '${id}': cannot read ${src.keyFile}: ${(err as Error).message}`);
    }
  } else if (src.keyEnv) {
    b64 = env[src.keyEnv];
    if (!b64) throw new RestoreError(FailureType.Configuration, `encryption key '${id}': environment variable ${src.keyEnv} is not set`);
  }
  const key = Buffer.from(b64 ?? '', 'base64');
  if (key.length !== 32) {
    throw new RestoreError(FailureType.Configuration, `encryption key '${id}' must be 32 bytes, base64-encoded (got ${key.length} bytes)`);
  }
  return key;
}

/**
 * AES-256-GCM payload codec: each payload is serialised whole (metadata and data) and sealed under the
 * active key with a fresh 96-bit IV; the key id travels in the clear so history written under an older key
 * stays readable while that key is listed. Payloads it did not encrypt pass through unchanged.
 */
export class AesGcmCodec implements PayloadCodec {
  private readonly keys: Map<string, Buffer>;

  constructor(
    keys: Map<string, Buffer>,
    private readonly activeKeyId: string,
  ) {
    if (!keys.has(activeKeyId)) throw new RestoreError(FailureType.Configuration, `encryption key '${activeKeyId}' is not among the keys`);
    this.keys = keys;
  }

  static fromConfig(cfg: EncryptionConfig, env: NodeJS.ProcessEnv = process.env): AesGcmCodec {
    const keys = new Map(Object.entries(cfg.keys).map(([id, src]) => [id, loadKey(id, src, env)] as const));
    return new AesGcmCodec(keys, cfg.keyId);
  }

  async encode(payloads: Payload[]): Promise<Payload[]> {
    const key = this.keys.get(this.activeKeyId)!;
    return payloads.map((p) => {
      const plain = temporal.api.common.v1.Payload.encode(p).finish();
      const iv = randomBytes(IV_BYTES);
      const cipher = createCipheriv('aes-256-gcm', key, iv);
      const sealed = Buffer.concat([iv, cipher.update(plain), cipher.final(), cipher.getAuthTag()]);
      return {
        metadata: { encoding: text(ENCODING), [KEY_ID_METADATA]: text(this.activeKeyId), [CIPHER_METADATA]: text(CIPHER) },
        data: sealed,
      };
    });
  }

  async decode(payloads: Payload[]): Promise<Payload[]> {
    return payloads.map((p) => {
      const encoding = p.metadata?.encoding ? Buffer.from(p.metadata.encoding).toString('utf8') : undefined;
      if (encoding !== ENCODING) return p;
      const keyId = p.metadata?.[KEY_ID_METADATA] ? Buffer.from(p.metadata[KEY_ID_METADATA]).toString('utf8') : '';
      const key = this.keys.get(keyId);
      if (!key) throw new RestoreError(FailureType.Configuration, `payload is encrypted with key '${keyId}', which is not configured`);
      const data = Buffer.from(p.data ?? new Uint8Array());
      if (data.length < IV_BYTES + TAG_BYTES) throw new RestoreError(FailureType.Configuration, 'encrypted payload is truncated');
      const decipher = createDecipheriv('aes-256-gcm', key, data.subarray(0, IV_BYTES));
      decipher.setAuthTag(data.subarray(data.length - TAG_BYTES));
      const plain = Buffer.concat([decipher.update(data.subarray(IV_BYTES, data.length - TAG_BYTES)), decipher.final()]);
      return temporal.api.common.v1.Payload.decode(plain) as Payload;
    });
  }
}

interface JsonPayload {
  metadata?: Record<string, string>;
  data?: string;
}

const fromJson = (p: JsonPayload): Payload => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
  data: Buffer.from(p.data ?? '', 'base64'),
});
const toJson = (p: Payload): JsonPayload => ({
  metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
  data: Buffer.from(p.data ?? new Uint8Array()).toString('base64'),
});

/**
 * The codec server the Temporal Web UI calls to show encrypted payloads: POST /encode and /decode with
 * `{"payloads": [...]}` (base64 metadata values and data), CORS for the UI's origin.
 */
export function startCodecServer(
  codec: PayloadCodec,
  opts: { port?: number; host?: string; allowOrigins: string[] },
): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    const origin = req.headers.origin;
    if (origin && opts.allowOrigins.includes(origin)) {
      res.setHeader('Access-Control-Allow-Origin', origin);
      res.setHeader('Access-Control-Allow-Methods', 'POST, OPTIONS');
      res.setHeader('Access-Control-Allow-Headers', 'Content-Type, X-Namespace, Authorization');
      res.setHeader('Access-Control-Allow-Credentials', 'true');
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204).end();
      return;
    }
    const route = req.url?.split('?')[0];
    if (req.method !== 'POST' || (route !== '/encode' && route !== '/decode')) {
      res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: POST /encode or /decode');
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      void (async () => {
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { payloads?: JsonPayload[] };
          const input = (body.payloads ?? []).map(fromJson);
          const out = route === '/encode' ? await codec.encode(input) : await codec.decode(input);
          res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ payloads: out.map(toJson) }));
        } catch (err) {
          res.writeHead(400, { 'Content-Type': 'text/plain' }).end((err as Error).message);
        }
      })();
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      const addr = server.address() as { port: number };
      resolve({
        url: `http://${opts.host ?? '127.0.0.1'}:${addr.port}`,
        close: () => new Promise<void>((r) => server.close(() => r())),
      });
    });
  });
}
