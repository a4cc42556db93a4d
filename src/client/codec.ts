import { createCipheriv, createDecipheriv, createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import type { Payload, PayloadCodec } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { FailureType, RestoreError } from '../domain/errors';

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

/** Largest request body the codec server reads; the UI sends a page of payloads at a time. */
export const CODEC_SERVER_MAX_BODY = 4 * 1024 * 1024;

export interface CodecServerOptions {
  /** Listen port (0: a free one). */
  port?: number;
  /** Listen address; loopback by default. */
  host?: string;
  /** Origins (the Web UI's) that may call it from a browser. */
  allowOrigins: string[];
  /** Bearer token every /encode and /decode request must carry. */
  token: string;
  /** Host header names accepted besides the loopback ones (the name clients use to reach it). */
  allowedHosts?: string[];
  /** Body cap in bytes (default 4 MiB); larger requests get 413. */
  maxBodyBytes?: number;
}

const LOOPBACK_NAMES = ['localhost', '127.0.0.1', '::1'];

/** The host name of a Host header value, lower-case, without port or IPv6 brackets. */
function hostName(header: string): string {
  const h = header.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(1, h.indexOf(']') < 0 ? undefined : h.indexOf(']'));
  const colon = h.lastIndexOf(':');
  return colon < 0 ? h : h.slice(0, colon);
}

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/**
 * The codec server the Temporal Web UI (and `temporal --codec-endpoint`) calls to show encrypted payloads:
 * POST /encode and /decode with `{"payloads": [...]}` (base64 metadata values and data). Every request
 * must come with the bearer token (`Authorization: Bearer T`, or for the Web UI, which cannot add a header,
 * the endpoint `/t/T`), name a known host (421 otherwise, against DNS rebinding), stay under the body cap
 * (413), and a browser may call it only from the configured UI origins (CORS).
 */
export function startCodecServer(codec: PayloadCodec, opts: CodecServerOptions): Promise<{ url: string; close: () => Promise<void> }> {
  if (opts.token.length < 16) throw new RestoreError(FailureType.Configuration, 'codec server token must be at least 16 characters');
  const tokenDigest = digest(opts.token);
  const maxBody = opts.maxBodyBytes ?? CODEC_SERVER_MAX_BODY;
  const listenHost = opts.host ?? '127.0.0.1';
  const hosts = new Set([...LOOPBACK_NAMES, ...(opts.allowedHosts ?? []).map((h) => hostName(h))]);
  if (listenHost !== '0.0.0.0' && listenHost !== '::') hosts.add(hostName(net.isIPv6(listenHost) ? `[${listenHost}]` : listenHost));
  const tokenOk = (t: string | undefined): boolean => t !== undefined && timingSafeEqual(digest(t), tokenDigest);
  const plain = (res: http.ServerResponse, status: number, text: string, headers: Record<string, string> = {}): void => {
    res.writeHead(status, { 'Content-Type': 'text/plain; charset=utf-8', ...headers }).end(text);
  };

  const server = http.createServer((req, res) => {
    if (!req.headers.host || !hosts.has(hostName(req.headers.host))) {
      plain(res, 421, `unknown host '${req.headers.host ?? ''}': this codec server answers to ${[...hosts].join(', ')}`);
      req.resume();
      return;
    }
    const origin = req.headers.origin;
    const originOk = origin !== undefined && opts.allowOrigins.includes(origin);
    if (originOk) {
      res.setHeader('Access-Control-Allow-Origin', origin);
      res.setHeader('Access-Control-Allow-Methods', 'POST, OPTIONS');
      res.setHeader('Access-Control-Allow-Headers', 'Content-Type, X-Namespace, Authorization');
      res.setHeader('Access-Control-Allow-Credentials', 'true');
      res.setHeader('Vary', 'Origin');
    }
    if (origin !== undefined && !originOk) {
      plain(res, 403, `origin '${origin}' may not call this codec server`);
      req.resume();
      return;
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204).end();
      return;
    }
    const m = /^(?:\/t\/([^/?]+))?(\/encode|\/decode)(?:\?.*)?$/.exec(req.url ?? '');
    if (req.method !== 'POST' || !m) {
      plain(res, 404, 'not found: POST /encode or /decode');
      req.resume();
      return;
    }
    const [, pathToken, route] = m;
    const bearer = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '')?.[1];
    if (!tokenOk(bearer) && !tokenOk(pathToken === undefined ? undefined : decodeURIComponent(pathToken))) {
      plain(res, 401, 'a valid bearer token is required', { 'WWW-Authenticate': 'Bearer realm="vmrestore codec server"' });
      req.resume();
      return;
    }
    const tooLarge = (): void => {
      plain(res, 413, `request body exceeds ${maxBody} bytes`, { Connection: 'close' });
      // Drain what the client still sends (up to a bound), so it reads the reply instead of a reset.
      let drained = 0;
      req.removeAllListeners('data');
      req.on('data', (c: Buffer) => {
        drained += c.length;
        if (drained > 16 * maxBody) req.destroy();
      });
      req.resume();
    };
    if (Number(req.headers['content-length'] ?? 0) > maxBody) {
      tooLarge();
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    let refused = false;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > maxBody && !refused) {
        refused = true;
        chunks.length = 0;
        tooLarge();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (refused) return;
      void (async () => {
        try {
          const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { payloads?: JsonPayload[] };
          if (!Array.isArray(body.payloads)) throw new Error('body must be {"payloads": [...]}');
          const input = body.payloads.map(fromJson);
          const out = route === '/encode' ? await codec.encode(input) : await codec.decode(input);
          res.writeHead(200, { 'Content-Type': 'application/json' }).end(JSON.stringify({ payloads: out.map(toJson) }));
        } catch (err) {
          plain(res, 400, (err as Error).message);
        }
      })();
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, listenHost, () => {
      const addr = server.address() as { port: number };
      const shown = listenHost === '0.0.0.0' || listenHost === '::' ? '127.0.0.1' : net.isIPv6(listenHost) ? `[${listenHost}]` : listenHost;
      resolve({
        url: `http://${shown}:${addr.port}`,
        close: () => new Promise<void>((r) => server.close(() => r())),
      });
    });
  });
}

/**
 * The codec server's bearer token: `VMRESTORE_CODEC_TOKEN` when set, else the token file; a missing file
 * is created with a fresh random token (mode 0600), which the caller prints once.
 */
export function loadCodecServerToken(
  tokenFile: string,
  env: NodeJS.ProcessEnv = process.env,
): { token: string; created: boolean; source: string } {
  const fromEnv = env.VMRESTORE_CODEC_TOKEN;
  if (fromEnv !== undefined && fromEnv !== '') {
    if (fromEnv.trim().length < 16)
      throw new RestoreError(FailureType.Configuration, 'VMRESTORE_CODEC_TOKEN must be at least 16 characters');
    return { token: fromEnv.trim(), created: false, source: 'VMRESTORE_CODEC_TOKEN' };
  }
  let mode: number;
  try {
    mode = statSync(tokenFile).mode;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new RestoreError(FailureType.Configuration, `codec server token file ${tokenFile}: ${(err as Error).message}`);
    }
    const token = randomBytes(32).toString('base64url');
    try {
      writeFileSync(tokenFile, `${token}\n`, { mode: 0o600, flag: 'wx' });
    } catch (e) {
      throw new RestoreError(FailureType.Configuration, `cannot create codec server token file ${tokenFile}: ${(e as Error).message}`);
    }
    return { token, created: true, source: tokenFile };
  }
  if (mode & 0o077) {
    throw new RestoreError(
      FailureType.Configuration,
      `codec server token file ${tokenFile} is readable by others (mode ${(mode & 0o777).toString(8)}): chmod 600 it`,
    );
  }
  const token = readFileSync(tokenFile, 'utf8').trim();
  if (token.length < 16)
    throw new RestoreError(FailureType.Configuration, `codec server token file ${tokenFile}: token must be at least 16 characters`);
  return { token, created: false, source: tokenFile };
}
