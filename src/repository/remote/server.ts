import { createHash, timingSafeEqual, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import * as fs from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { FailureType, RestoreError } from '../../domain/errors';
import { readChunk } from '../chunks';
import { isErrno } from '../files';
import { blockLength, chunkPath, findDisk, isRestorePointId, type RestorePoint, type RestorePointDisk } from '../format';
import { getRestorePoint, listRestorePoints } from '../restore-points';
import { API_PREFIX, CHUNK_STREAM_TYPE, FRAME_HEADER_BYTES, frameHeader, FrameStatus, MAX_STEP, type ErrorBody } from './protocol';

export interface RepositoryServerOptions {
  repoDir: string;
  host: string;
  /** 0: any free port. */
  port: number;
  /** PEM certificate and key. */
  cert: string | Buffer;
  key: string | Buffer;
  token: string;
  /**
   * Also hash every chunk before sending it. Off by default: the reading side verifies every chunk anyway,
   * and hashing here too would halve what the repository host can serve.
   */
  verifyChunks?: boolean;
  /** Chunk files read ahead of the socket per stream, so disk reads overlap with sending. */
  readAhead?: number;
  log?: (line: string) => void;
}

export interface RepositoryServer {
  url: string;
  port: number;
  /** SHA-256 fingerprint of the certificate, colon-separated, for clients' `repository.thumbprint`. */
  thumbprint: string;
  close(): Promise<void>;
}

const DEFAULT_READ_AHEAD = 4;
const CACHED_RESTORE_POINTS = 32;
const POOLED_BUFFERS = 64;

type ChunkFile = { status: 'ok'; data: Buffer } | { status: 'missing' } | { status: 'corrupt'; reason: string };

/** Reads a stored chunk, checking its size against the block map (the frame length depends on it). */
async function readChunkFile(
  repoDir: string,
  hash: string,
  expectedLength: number,
  verify: boolean,
  buffers: BufferPool,
): Promise<ChunkFile> {
  if (verify) return readChunk(repoDir, hash, expectedLength);
  let handle: fs.FileHandle;
  try {
    handle = await fs.open(chunkPath(repoDir, hash), 'r');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { status: 'missing' };
    throw err;
  }
  try {
    const { size } = await handle.stat();
    if (size !== expectedLength) return { status: 'corrupt', reason: `size ${size} bytes, expected ${expectedLength}` };
    const data = buffers.take(expectedLength);
    let filled = 0;
    while (filled < expectedLength) {
      const { bytesRead } = await handle.read(data, filled, expectedLength - filled, filled);
      if (bytesRead === 0) {
        buffers.give(data);
        return { status: 'corrupt', reason: `file ended after ${filled} bytes, expected ${expectedLength}` };
      }
      filled += bytesRead;
    }
    return { status: 'ok', data };
  } finally {
    await handle.close();
  }
}

/**
 * Chunk buffers reused once the socket has taken their bytes: a stream that allocated one per chunk would
 * leave the garbage collector a disk's worth to find, and the server's memory would follow it.
 */
class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private count = 0;

  constructor(private readonly limit: number) {}

  take(length: number): Buffer {
    const list = this.free.get(length);
    const buf = list?.pop();
    if (buf) {
      this.count--;
      return buf;
    }
    return Buffer.allocUnsafe(length);
  }

  give(buf: Buffer): void {
    if (this.count >= this.limit) return;
    let list = this.free.get(buf.length);
    if (!list) this.free.set(buf.length, (list = []));
    list.push(buf);
    this.count++;
  }
}

/**
 * Serves one repository directory over HTTPS to workers on other hosts: restore point metadata, and the
 * chunks of a disk as one stream per request in block order. Memory per stream is `readAhead` chunks: each
 * chunk is written only when the socket has drained the previous ones.
 */
export async function startRepositoryServer(opts: RepositoryServerOptions): Promise<RepositoryServer> {
  const { repoDir, log = () => {} } = opts;
  const readAhead = opts.readAhead ?? DEFAULT_READ_AHEAD;
  const tokenDigest = createHash('sha256').update(`Bearer ${opts.token}`).digest();
  const restorePoints = new Map<string, Promise<RestorePoint>>();
  const buffers = new BufferPool(POOLED_BUFFERS);
  const restorePointById = (id: string): Promise<RestorePoint> => {
    let rp = restorePoints.get(id);
    if (!rp) {
      // Restore points never change once written, so a bounded cache needs no invalidation.
      if (restorePoints.size >= CACHED_RESTORE_POINTS) restorePoints.delete(restorePoints.keys().next().value!);
      rp = getRestorePoint(repoDir, id);
      restorePoints.set(id, rp);
      rp.catch(() => restorePoints.delete(id));
    }
    return rp;
  };

  const authorized = (req: IncomingMessage): boolean => {
    const given = createHash('sha256')
      .update(req.headers.authorization ?? '')
      .digest();
    return timingSafeEqual(given, tokenDigest);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (!authorized(req)) {
      res.setHeader('www-authenticate', 'Bearer');
      return sendError(res, 401, { type: FailureType.Configuration, message: 'bearer token refused', retryable: false });
    }
    if (req.method !== 'GET') {
      return sendError(res, 405, { type: FailureType.InvalidRequest, message: `${req.method} is not supported`, retryable: false });
    }
    const url = new URL(req.url ?? '/', 'https://repository');
    const parts = url.pathname.startsWith(API_PREFIX) ? url.pathname.slice(API_PREFIX.length).split('/').slice(1) : null;
    if (parts === null) return sendError(res, 404, { type: FailureType.NotFound, message: `no route ${url.pathname}`, retryable: false });
    if (parts.length === 0 || (parts.length === 1 && parts[0] === '')) return sendJson(res, await listRestorePoints(repoDir));
    const id = decodeURIComponent(parts[0]);
    if (parts.length === 1) return sendJson(res, await getRestorePoint(repoDir, id));
    if (parts.length === 4 && parts[1] === 'disks' && parts[3] === 'chunks' && /^\d+$/.test(parts[2])) {
      if (!isRestorePointId(id)) throw new RestoreError(FailureType.InvalidRequest, `'${id}' is not a restore point id`);
      const rp = await restorePointById(id);
      const disk = findDisk(rp, Number(parts[2]));
      const from = blockParam(url, 'from', 0, disk);
      const to = blockParam(url, 'to', disk.blocks.length, disk);
      const step = Number(url.searchParams.get('step') ?? 1);
      if (!Number.isInteger(step) || step < 1 || step > MAX_STEP) {
        throw new RestoreError(
          FailureType.InvalidRequest,
          `step=${url.searchParams.get('step')} must be a whole number from 1 to ${MAX_STEP}`,
        );
      }
      return streamChunks(res, rp, disk, from, Math.max(from, to), step);
    }
    return sendError(res, 404, { type: FailureType.NotFound, message: `no route ${url.pathname}`, retryable: false });
  };

  const streamChunks = async (res: ServerResponse, rp: RestorePoint, disk: RestorePointDisk, from: number, to: number, step: number) => {
    // The length of the whole stream when every chunk is there; a bad chunk ends it early with its frame.
    let contentLength = 0;
    for (let i = from; i < to; i += step)
      if (disk.blocks[i] !== null) contentLength += FRAME_HEADER_BYTES + blockLength(disk, rp.blockSize, i);
    res.writeHead(200, { 'content-type': CHUNK_STREAM_TYPE, 'content-length': contentLength, 'cache-control': 'no-store' });
    let closed = false;
    res.once('close', () => (closed = true));
    const drained = () =>
      new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    const pending: Array<{ blockIndex: number; read: Promise<ChunkFile> }> = [];
    let next = from;
    const fill = () => {
      while (pending.length < readAhead && next < to) {
        const hash = disk.blocks[next];
        if (hash !== null) {
          const read = readChunkFile(repoDir, hash, blockLength(disk, rp.blockSize, next), opts.verifyChunks === true, buffers);
          read.catch(() => undefined);
          pending.push({ blockIndex: next, read });
        }
        next += step;
      }
    };
    fill();
    while (pending.length > 0 && !closed) {
      const { blockIndex, read } = pending.shift()!;
      const chunk = await read;
      fill();
      if (closed) break;
      if (chunk.status !== 'ok') {
        const reason = Buffer.from(
          chunk.status === 'missing' ? `not found at ${chunkPath(repoDir, disk.blocks[blockIndex]!)}` : chunk.reason,
        );
        log(`restore point ${rp.id} disk ${disk.index} block ${blockIndex}: chunk ${chunk.status} (${reason.toString()})`);
        res.write(frameHeader(chunk.status === 'missing' ? FrameStatus.Missing : FrameStatus.Corrupt, blockIndex, reason.length));
        res.write(reason);
        // Shorter than announced: the connection must not be reused.
        res.once('finish', () => res.destroy());
        res.socket?.end();
        return;
      }
      res.write(frameHeader(FrameStatus.Ok, blockIndex, chunk.data.length));
      if (!res.write(chunk.data)) {
        await drained();
        // Drained: the socket has taken (encrypted) every byte written so far, so the buffer is free again.
        if (!opts.verifyChunks && !closed) buffers.give(chunk.data);
      }
    }
    res.end();
  };

  const server = https.createServer({ cert: opts.cert, key: opts.key, keepAliveTimeout: 60_000 }, (req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (res.headersSent) {
        // Mid-stream: the client sees a cut stream and reads on from where it stopped.
        log(`${req.url}: ${(err as Error).message}`);
        res.destroy();
        return;
      }
      if (err instanceof RestoreError) {
        const status =
          err.type === FailureType.RestorePointNotFound || err.type === FailureType.NotFound
            ? 404
            : err.type === FailureType.InvalidRequest
              ? 400
              : 500;
        return sendError(res, status, { type: err.type, message: err.message, retryable: !err.nonRetryable });
      }
      log(`${req.url}: ${(err as Error).stack ?? String(err)}`);
      sendError(res, 500, { type: 'RepositoryUnavailable', message: `repository host: ${(err as Error).message}`, retryable: true });
    });
  });
  server.listen(opts.port, opts.host);
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  return {
    url: `https://${host === '0.0.0.0' || host === '[::]' ? 'localhost' : host}:${port}`,
    port,
    thumbprint: new X509Certificate(opts.cert).fingerprint256,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function blockParam(url: URL, name: string, dflt: number, disk: RestorePointDisk): number {
  const raw = url.searchParams.get(name);
  if (raw === null) return dflt;
  const n = Number(raw);
  if (!/^\d+$/.test(raw) || n > disk.blocks.length) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `${name}=${raw} is not a block index of disk ${disk.index} (0…${disk.blocks.length})`,
    );
  }
  return n;
}

function sendJson(res: ServerResponse, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

function sendError(res: ServerResponse, status: number, body: ErrorBody): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
