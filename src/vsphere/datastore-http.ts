import * as http from 'node:http';
import * as https from 'node:https';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { FailureType, RestoreError } from '../domain/errors';
import { VSphereNotFoundError } from './errors';
import type { Datacenter } from './finder';
import type { VSphereSession } from './session';
import { datastoreFileUrl } from './datastore-path';
import { VSphereFaultError } from './soap';
import { TLS_TRUST_ERROR_CODES } from './tls';

export interface DatastoreFileRef {
  /** Datacenter name or inventory path ('DC0', 'Folder/DC0'), or the datacenter itself. */
  datacenter: string | Datacenter;
  datastore: string;
  /** Path inside the datastore, e.g. 'web01/web01-flat.vmdk'. */
  path: string;
}

export interface UploadOptions extends DatastoreFileRef {
  /** Exact number of bytes `body` yields; sent as Content-Length. */
  size: number;
  body: AsyncIterable<Buffer | Uint8Array> | Iterable<Buffer | Uint8Array> | Readable;
  signal?: AbortSignal;
  /** How long to wait for the server's answer once the whole body is sent (default 60 s). */
  responseTimeoutMs?: number;
}

export interface DownloadOptions extends DatastoreFileRef {
  /** Bytes [offset, offset + length) only; without it, the whole file. */
  range?: { offset: number; length: number };
  signal?: AbortSignal;
}

export interface DatastoreDownload {
  url: URL;
  /** 200, or 206 for a range. */
  statusCode: number;
  contentLength: number;
  /** Total file size when the server reports it (Content-Range on a 206, else Content-Length). */
  totalSize?: number;
  body: Readable;
}

function dcPath(dc: string | Datacenter): string {
  return typeof dc === 'string' ? dc : dc.path;
}

/** Fails the stream when the body is longer or shorter than announced, rather than corrupting the file. */
class ByteCounter extends Transform {
  bytes = 0;
  constructor(
    private readonly expected: number,
    private readonly url: URL,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.expected) {
      cb(new RestoreError(FailureType.InvalidRequest, `upload to ${this.url} yielded more than the announced ${this.expected} bytes`));
      return;
    }
    cb(null, chunk);
  }
  override _flush(cb: TransformCallback): void {
    if (this.bytes !== this.expected) {
      cb(new RestoreError(FailureType.InvalidRequest, `upload to ${this.url} yielded ${this.bytes} bytes, announced ${this.expected}`));
      return;
    }
    cb();
  }
}

function httpError(method: string, url: URL, status: number, statusMessage: string, body: string): Error {
  const text = `${method} ${url} failed: HTTP ${status} ${statusMessage}${body ? `: ${body.slice(0, 300).trim()}` : ''}`;
  if (status === 404) return new VSphereNotFoundError(text);
  return new VSphereFaultError('HttpError', text, !(status >= 500 || status === 429 || status === 408));
}

function transportError(method: string, url: URL, err: unknown): Error {
  if (err instanceof RestoreError || err instanceof VSphereNotFoundError) return err;
  const e = err as NodeJS.ErrnoException;
  if (e?.name === 'AbortError') return e;
  return new VSphereFaultError(
    'TransportError',
    `${method} ${url} failed: ${e?.code ? `${e.code} ` : ''}${e?.message ?? String(err)}`,
    TLS_TRUST_ERROR_CODES.has(e?.code ?? ''),
  );
}

async function readSmall(res: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of res) {
    if (size < 4096) chunks.push(c as Buffer);
    size += (c as Buffer).length;
  }
  return Buffer.concat(chunks).toString('utf8');
}

function request(client: VSphereSession, url: URL, options: http.RequestOptions): http.ClientRequest {
  const mod = url.protocol === 'https:' ? https : http;
  return mod.request(url, {
    ...options,
    agent: client.agent,
    headers: { Cookie: client.sessionCookie, ...options.headers },
  });
}

/**
 * Streams `body` into a datastore file with HTTP PUT (the NBD-mode data path), replacing the file.
 * Memory use is bounded by stream buffering, whatever the size.
 */
export async function uploadDatastoreFile(client: VSphereSession, opts: UploadOptions): Promise<{ url: URL; bytes: number }> {
  const url = datastoreFileUrl(client, dcPath(opts.datacenter), opts.datastore, opts.path);
  const req = request(client, url, {
    method: 'PUT',
    signal: opts.signal,
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(opts.size) },
  });
  const response = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once('response', resolve);
    req.once('error', reject);
  });
  // The server may answer (e.g. 404) before the body is sent; that answer is the error to report.
  response.catch(() => undefined);
  // A socket that stops moving bytes (the server stopped reading the body) fails the PUT instead of
  // holding the activity, whose heartbeats would otherwise keep it alive.
  const stallMs = opts.responseTimeoutMs ?? 60_000;
  req.setTimeout(stallMs, () => req.destroy(new Error(`no bytes moved for ${stallMs} ms`)));
  const counter = new ByteCounter(opts.size, url);
  const source = opts.body instanceof Readable ? opts.body : Readable.from(opts.body, { objectMode: false });
  const sent = pipeline(source, counter, req);
  sent.catch(() => undefined);
  try {
    // The server answers as soon as it has read the last byte. When that answer is parsed before this
    // side's last write completes, Node never emits the request's 'finish' and the pipeline waits until
    // the socket's idle timeout (the intermittent NBD stall under load: all bytes in the file, a 200 on
    // the socket, the PUT failing 60 s later). A 2xx answer once the whole body was handed over ends the PUT.
    const first = await Promise.race([
      sent.then(() => 'sent' as const),
      response.then(
        () => 'answered' as const,
        () => sent.then(() => 'sent' as const),
      ),
    ]);
    if (first === 'answered') {
      const res = await response;
      const status = res.statusCode ?? 0;
      if (status >= 200 && status < 300 && counter.bytes === opts.size) {
        await readSmall(res);
        // Without 'finish' the socket would never go back to the pool in a usable state.
        req.destroy();
        return { url, bytes: counter.bytes };
      }
      if (status >= 300) {
        const text = await readSmall(res);
        req.destroy();
        throw httpError('PUT', url, status, res.statusMessage ?? '', text);
      }
    }
    await sent;
  } catch (err) {
    if (err instanceof VSphereFaultError || err instanceof VSphereNotFoundError) throw err;
    const early = await Promise.race([response, new Promise<undefined>((r) => setTimeout(r, 50, undefined))]).catch(() => undefined);
    if (early && (early.statusCode ?? 0) >= 300) {
      throw httpError('PUT', url, early.statusCode ?? 0, early.statusMessage ?? '', await readSmall(early));
    }
    req.destroy();
    throw transportError('PUT', url, err);
  }
  let res: http.IncomingMessage;
  const waitMs = opts.responseTimeoutMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  try {
    // A server that took the whole body but never answers must not hold the restore forever.
    res = await Promise.race([
      response,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no response ${waitMs} ms after the body was sent`)), waitMs);
      }),
    ]);
  } catch (err) {
    req.destroy();
    throw transportError('PUT', url, err);
  } finally {
    clearTimeout(timer);
  }
  const text = await readSmall(res);
  const status = res.statusCode ?? 0;
  if (status < 200 || status >= 300) throw httpError('PUT', url, status, res.statusMessage ?? '', text);
  return { url, bytes: counter.bytes };
}

/** GET a datastore file, or a byte range of it, as a stream. */
export async function downloadDatastoreFile(client: VSphereSession, opts: DownloadOptions): Promise<DatastoreDownload> {
  const url = datastoreFileUrl(client, dcPath(opts.datacenter), opts.datastore, opts.path);
  const headers: Record<string, string> = {};
  if (opts.range) {
    if (opts.range.length <= 0) {
      throw new RestoreError(FailureType.InvalidRequest, `empty range requested from ${url}`);
    }
    headers.Range = `bytes=${opts.range.offset}-${opts.range.offset + opts.range.length - 1}`;
  }
  const req = request(client, url, { method: 'GET', signal: opts.signal, headers });
  let res: http.IncomingMessage;
  try {
    res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
      req.end();
    });
  } catch (err) {
    throw transportError('GET', url, err);
  }
  const status = res.statusCode ?? 0;
  if (status !== 200 && status !== 206) {
    throw httpError('GET', url, status, res.statusMessage ?? '', await readSmall(res));
  }
  if (opts.range && status !== 206) {
    res.destroy();
    throw new VSphereFaultError('HttpError', `GET ${url} ignored Range ${headers.Range} (HTTP ${status})`);
  }
  const contentLength = Number(res.headers['content-length'] ?? -1);
  const total = /\/(\d+)$/.exec(String(res.headers['content-range'] ?? ''));
  return {
    url,
    statusCode: status,
    contentLength,
    totalSize: total ? Number(total[1]) : status === 200 && contentLength >= 0 ? contentLength : undefined,
    body: res,
  };
}
