import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RepositoryConfig } from '../../config/schema';
import { FailureType, RestoreError } from '../../domain/errors';
import { createAgent, TLS_TRUST_ERROR_CODES } from '../../vsphere/tls';
import { badChunkError, blockLength, findDisk, validateRestorePoint, type RestorePoint, type RestorePointSummary } from '../format';
import { DEFAULT_READ_CONCURRENCY, type DiskBlock, type ReadDiskBlocksOptions } from '../reader';
import { checkVmMatchesDisks } from '../restore-points';
import type { RepositorySource } from '../source';
import { HashPool } from './hash-pool';
import {
  CHUNK_STREAM_TYPE,
  chunksUrlPath,
  FRAME_HEADER_BYTES,
  FrameStatus,
  loadRepositoryToken,
  restorePointsUrlPath,
  restorePointUrlPath,
  type ErrorBody,
} from './protocol';

export interface RemoteRepositoryOptions {
  /** https://host:port of `vmrestore repository serve`. */
  url: string;
  token: string;
  /** PEM CA certificate(s) the server's certificate must chain to. */
  ca?: string | Buffer;
  /** SHA-256 fingerprint pinning the server's certificate, whoever signed it. */
  thumbprint?: string;
  /**
   * How long the client keeps reconnecting to a data mover that stopped answering (down, restarting, cut
   * off) before it fails with a retryable RepositoryUnavailable; each block received starts the window again.
   */
  retryWindowMs?: number;
}

const DEFAULT_RETRY_WINDOW_MS = 30_000;
/** Parallel chunk streams per disk read at most; each costs a connection on the data mover. */
const MAX_LANES = 16;
/** Verified blocks a lane holds for the consumer before it stops reading its stream. */
const LANE_BLOCKS_AHEAD = 8;
const MAX_BACKOFF_MS = 2_000;

/** A failure the next connection may not have: the data mover is down, restarting, or cut off. */
class Unreachable extends Error {}

/** TLS failures no reconnect fixes: the certificate is not the one configured. */
function isTlsTrustError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException)?.code ?? '';
  return TLS_TRUST_ERROR_CODES.has(code) || code.startsWith('ERR_TLS_') || code.startsWith('ERR_SSL_') || /certificate/i.test(code);
}

/**
 * Reads restore points and disk blocks from the repository host's data mover over one keep-alive HTTPS
 * agent. Each disk read is one streamed request for all of the disk's stored chunks from the resume point;
 * a cut stream reconnects from the next block it still needs. Every chunk is hashed here, whatever the
 * server said, so a tampered server or chunk fails like a corrupt local chunk.
 */
export class RemoteRepository implements RepositorySource {
  readonly location: string;
  private readonly agent: https.Agent;
  private readonly authorization: string;
  private readonly retryWindowMs: number;
  private readonly ca: string | Buffer | undefined;
  private readonly thumbprint: string | undefined;
  /** The pinned SHA-256 fingerprint, bare upper-case hex. */
  private readonly pin: string | undefined;
  private readonly hashes = new HashPool();

  constructor(opts: RemoteRepositoryOptions) {
    const url = new URL(opts.url);
    if (url.protocol !== 'https:') {
      throw new RestoreError(
        FailureType.Configuration,
        `repository url '${opts.url}' must be https:// (the bearer token goes with every request)`,
      );
    }
    this.location = url.origin;
    this.authorization = `Bearer ${opts.token}`;
    this.retryWindowMs = opts.retryWindowMs ?? DEFAULT_RETRY_WINDOW_MS;
    this.ca = opts.ca;
    this.thumbprint = opts.thumbprint;
    this.pin = opts.thumbprint?.replace(/:/g, '').toUpperCase();
    this.agent = opts.thumbprint
      ? (createAgent(url, { thumbprint: opts.thumbprint }) as https.Agent)
      : new https.Agent({ keepAlive: true, maxSockets: 16, ca: opts.ca });
  }

  /** The client a worker's `repository` config describes (url, token reference, caFile or thumbprint). */
  static fromConfig(repo: RepositoryConfig, env: NodeJS.ProcessEnv = process.env): RemoteRepository {
    if (!repo.url) throw new RestoreError(FailureType.Configuration, 'config repository.url: is required for the data mover');
    let ca: Buffer | undefined;
    if (repo.caFile) {
      try {
        ca = readFileSync(repo.caFile);
      } catch (err) {
        throw new RestoreError(
          FailureType.Configuration,
          `config repository.caFile: cannot read '${repo.caFile}': ${(err as Error).message}`,
        );
      }
    }
    return new RemoteRepository({ url: repo.url, token: loadRepositoryToken(repo, env), ca, thumbprint: repo.thumbprint });
  }

  close(): void {
    this.agent.destroy();
    this.hashes.close();
  }

  async listRestorePoints(): Promise<RestorePointSummary[]> {
    return this.withReconnect('listing restore points', undefined, async () => {
      const res = await this.get(restorePointsUrlPath());
      return (await readJson(res)) as RestorePointSummary[];
    });
  }

  async getRestorePoint(idOrPrefix: string): Promise<RestorePoint> {
    const path = restorePointUrlPath(idOrPrefix.trim());
    const raw = await this.withReconnect(`reading restore point '${idOrPrefix}'`, undefined, async () => readJson(await this.get(path)));
    // The block maps drive reads and hash checks here, so they are checked here, not trusted.
    const where = `${this.location}${path}`;
    const rp = checkVmMatchesDisks(validateRestorePoint(raw, where), where);
    return rp;
  }

  /**
   * `concurrency` streams ("lanes") read the disk at once, lane k the blocks i with i ≡ k (mod lanes), so
   * all lanes advance together through the disk and each holds only a couple of blocks ahead of the consumer.
   */
  async *readDiskBlocks(rp: RestorePoint, diskIndex: number, opts: ReadDiskBlocksOptions = {}): AsyncGenerator<DiskBlock, void, undefined> {
    const disk = findDisk(rp, diskIndex);
    const { blockSize } = rp;
    const fromOffset = opts.fromOffset ?? 0;
    const concurrency = opts.concurrency ?? DEFAULT_READ_CONCURRENCY;
    if (!Number.isSafeInteger(fromOffset) || fromOffset < 0 || fromOffset > disk.capacityBytes) {
      throw new RestoreError(
        FailureType.InvalidRequest,
        `fromOffset ${fromOffset} is outside disk ${diskIndex} of restore point ${rp.id} (capacity ${disk.capacityBytes} bytes)`,
      );
    }
    if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
      throw new RestoreError(FailureType.InvalidRequest, `concurrency ${concurrency} must be a positive integer`);
    }
    const total = disk.blocks.length;
    const first = fromOffset === disk.capacityBytes ? total : Math.floor(fromOffset / blockSize);
    const stop = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
    const laneCount = Math.min(concurrency, MAX_LANES);
    const lanes: Lane[] = [];
    const laneFor = (blockIndex: number): Lane => {
      const k = blockIndex % laneCount;
      if (!lanes[k]) {
        lanes[k] = new Lane();
        this.runLane(lanes[k], rp, diskIndex, blockIndex, laneCount, signal).catch((err: unknown) => lanes[k].fail(err));
      }
      return lanes[k];
    };
    try {
      for (let i = first; i < total; i++) {
        opts.signal?.throwIfAborted();
        // Start every lane as early as its first block is known, so they all read from the start.
        for (let j = i; j < total && j < i + laneCount; j++) if (disk.blocks[j] !== null) laneFor(j);
        const length = blockLength(disk, blockSize, i);
        if (disk.blocks[i] === null) {
          yield { offset: i * blockSize, length, data: null };
          continue;
        }
        const data = await laneFor(i).take(i);
        opts.signal?.throwIfAborted();
        yield { offset: i * blockSize, length, data };
      }
    } finally {
      stop.abort();
    }
  }

  /** One lane: a chunk stream of every `step`-th block from `from`, reconnecting from where it stopped. */
  private async runLane(lane: Lane, rp: RestorePoint, diskIndex: number, from: number, step: number, signal: AbortSignal): Promise<void> {
    const disk = findDisk(rp, diskIndex);
    const { blockSize } = rp;
    const total = disk.blocks.length;
    const position = { next: from, lastProgress: Date.now() };
    let attempt = 0;
    const pending = () => {
      for (let i = position.next; i < total; i += step) if (disk.blocks[i] !== null) return true;
      return false;
    };
    const accept = (frame: Frame): void => {
      while (position.next < total && disk.blocks[position.next] === null) position.next += step;
      const { next } = position;
      const hash = disk.blocks[next];
      const offset = next * blockSize;
      if (frame.blockIndex !== next || hash === null || hash === undefined) {
        throw new RestoreError(
          FailureType.RepositoryCorrupt,
          `repository data mover ${this.location} sent block ${frame.blockIndex} of restore point ${rp.id} disk ${diskIndex} where block ${next} was due`,
        );
      }
      if (frame.status !== FrameStatus.Ok) {
        const reason = frame.body.toString('utf8');
        throw badChunkError(
          rp,
          diskIndex,
          offset,
          hash,
          frame.status === FrameStatus.Missing
            ? `is missing on the repository host ${this.location} (${reason})`
            : `is corrupt (${reason}; on ${this.location})`,
        );
      }
      const length = blockLength(disk, blockSize, next);
      if (frame.body.length !== length) {
        throw badChunkError(
          rp,
          diskIndex,
          offset,
          hash,
          `is corrupt (${frame.body.length} bytes served by ${this.location}, expected ${length})`,
        );
      }
      const verified = this.hashes.hash(frame.body).then((r) => {
        if (r.sha256 !== hash) throw badChunkError(rp, diskIndex, offset, hash, `is corrupt (sha256 mismatch; served by ${this.location})`);
        return r.data;
      });
      position.lastProgress = Date.now();
      attempt = 0;
      position.next += step;
      lane.push(frame.blockIndex, verified);
    };
    while (pending()) {
      try {
        await this.streamChunks(chunksUrlPath(rp.id, diskIndex, position.next, total, step), lane, accept, signal);
        if (pending()) throw new Unreachable(`the chunk stream ended before block ${position.next}`);
      } catch (err) {
        const cause = this.classify(err, signal);
        if (Date.now() - position.lastProgress > this.retryWindowMs) {
          throw this.unavailable(`reading restore point ${rp.id} disk ${diskIndex}`, cause);
        }
        await sleep(Math.min(MAX_BACKOFF_MS, 100 * 2 ** attempt++), undefined, { signal });
      }
    }
  }

  /**
   * One chunk stream on a TLS connection of its own, read in flowing mode and paused only while the lane
   * is full: node's HTTP client pauses and resumes its socket for every 16 KiB record, which costs more
   * than half the throughput of a plain download. Each frame goes to `accept` as it completes.
   */
  private streamChunks(path: string, lane: Lane, accept: (frame: Frame) => void, signal: AbortSignal): Promise<void> {
    const url = new URL(this.location);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    return new Promise<void>((resolve, reject) => {
      signal.throwIfAborted();
      const socket = tls.connect({
        host,
        port: Number(url.port || 443),
        servername: net.isIP(host) ? undefined : host,
        ca: this.ca,
        rejectUnauthorized: this.pin === undefined,
      });
      let settled = false;
      const finish = (err?: unknown): void => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        lane.onSpace = undefined;
        socket.destroy();
        if (err === undefined) resolve();
        else reject(err);
      };
      const onAbort = (): void => finish(signal.reason);
      signal.addEventListener('abort', onAbort);
      const parser = new FrameParser();
      let head: Buffer | null = Buffer.alloc(0);
      let status = 0;
      let bodyLeft = 0;
      const errorBody: Buffer[] = [];
      socket.once('secureConnect', () => {
        if (this.pin !== undefined) {
          const actual = (socket.getPeerCertificate().fingerprint256 ?? '').replace(/:/g, '').toUpperCase();
          if (actual !== this.pin) {
            return finish(
              Object.assign(
                new Error(`certificate SHA-256 ${socket.getPeerCertificate().fingerprint256} is not the pinned ${this.thumbprint}`),
                {
                  code: 'ERR_TLS_THUMBPRINT_MISMATCH',
                },
              ),
            );
          }
        }
        socket.write(`GET ${path} HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: ${this.authorization}\r\nConnection: close\r\n\r\n`);
      });
      lane.onSpace = () => socket.resume();
      socket.on('data', (piece: Buffer) => {
        try {
          if (head !== null) {
            head = Buffer.concat([head, piece]);
            const end = head.indexOf('\r\n\r\n');
            if (end < 0) {
              if (head.length > 64 * 1024) throw new Unreachable('an HTTP answer without an end of headers');
              return;
            }
            const lines = head.subarray(0, end).toString('latin1').split('\r\n');
            status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(lines[0])?.[1] ?? 0);
            const headers = new Map(
              lines.slice(1).map((l) => [l.slice(0, l.indexOf(':')).trim().toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]),
            );
            piece = head.subarray(end + 4);
            head = null;
            if (status === 200) {
              if (headers.get('content-type') !== CHUNK_STREAM_TYPE) {
                throw new RestoreError(
                  FailureType.Configuration,
                  `${this.location} answered a chunk read with '${headers.get('content-type')}': is it a vmrestore data mover?`,
                );
              }
              bodyLeft = Number(headers.get('content-length') ?? NaN);
              if (!Number.isSafeInteger(bodyLeft)) throw new Unreachable('a chunk stream without a content-length');
            }
          }
          if (status !== 200) {
            errorBody.push(piece);
            return;
          }
          bodyLeft -= piece.length;
          parser.push(piece, accept);
          if (lane.full) socket.pause();
          if (bodyLeft <= 0) finish();
        } catch (err) {
          finish(err);
        }
      });
      socket.once('end', () => {
        if (status !== 0 && status !== 200) {
          let body: Partial<ErrorBody> | undefined;
          try {
            body = JSON.parse(Buffer.concat(errorBody).toString('utf8')) as Partial<ErrorBody>;
          } catch {
            body = undefined;
          }
          return finish(this.httpError(path, status, body));
        }
        finish(new Unreachable(bodyLeft > 0 ? 'the chunk stream was cut' : 'the connection closed before an answer'));
      });
      socket.once('error', (err) => finish(err));
      socket.once('close', () => finish(new Unreachable('the connection closed')));
    });
  }

  /** Runs `fn` until it succeeds, fails for good, or the data mover has been unreachable for the retry window. */
  private async withReconnect<T>(what: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    const started = Date.now();
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        const cause = this.classify(err, signal);
        if (Date.now() - started > this.retryWindowMs) throw this.unavailable(what, cause);
        await sleep(Math.min(MAX_BACKOFF_MS, 100 * 2 ** attempt), undefined, { signal });
      }
    }
  }

  /** Rethrows what no reconnect fixes; returns the cause of one that may. */
  private classify(err: unknown, signal: AbortSignal | undefined): Unreachable {
    if (signal?.aborted) throw signal.reason;
    if (err instanceof RestoreError) throw err;
    if (err instanceof Unreachable) return err;
    if (isTlsTrustError(err)) {
      throw new RestoreError(
        FailureType.Configuration,
        `repository data mover ${this.location}: TLS certificate not trusted (${(err as Error).message}); ` +
          'check repository.caFile or repository.thumbprint against the certificate `repository serve` prints',
      );
    }
    return new Unreachable(
      `${(err as Error).message}${(err as NodeJS.ErrnoException).code ? ` (${(err as NodeJS.ErrnoException).code})` : ''}`,
    );
  }

  private unavailable(what: string, cause: Error): RestoreError {
    return new RestoreError(
      FailureType.RepositoryUnavailable,
      `repository data mover ${this.location} did not answer for ${Math.round(this.retryWindowMs / 1000)} s while ${what}: ${cause.message}`,
      false,
    );
  }

  private get(path: string, signal?: AbortSignal): Promise<IncomingMessage> {
    return new Promise((resolve, reject) => {
      const req = https.get(
        `${this.location}${path}`,
        { agent: this.agent, headers: { authorization: this.authorization }, signal },
        (res) => {
          const status = res.statusCode ?? 0;
          if (status === 200) return resolve(res);
          readJson(res, true)
            .then((body) => reject(this.httpError(path, status, body as Partial<ErrorBody> | undefined)))
            .catch(() => reject(this.httpError(path, status, undefined)));
        },
      );
      req.once('error', reject);
    });
  }

  private httpError(path: string, status: number, body: Partial<ErrorBody> | undefined): Error {
    if (status === 401 || status === 403) {
      return new RestoreError(
        FailureType.Configuration,
        `repository data mover ${this.location} refused the bearer token (HTTP ${status}): repository.tokenFile or tokenEnv ` +
          'must hold the token the data mover was started with',
      );
    }
    if (status >= 500 && body?.retryable !== false) return new Unreachable(`HTTP ${status}${body?.message ? `: ${body.message}` : ''}`);
    const known = (Object.values(FailureType) as string[]).includes(body?.type ?? '');
    return new RestoreError(
      known ? (body!.type as FailureType) : FailureType.InvalidRequest,
      body?.message
        ? `${body.message} (repository data mover ${this.location})`
        : `repository data mover ${this.location}${path}: HTTP ${status}`,
    );
  }
}

async function readJson(res: IncomingMessage, quiet = false): Promise<unknown> {
  const parts: Buffer[] = [];
  for await (const p of res) parts.push(p as Buffer);
  const text = Buffer.concat(parts).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (err) {
    if (quiet) return undefined;
    throw new Unreachable(`an unreadable answer (${(err as Error).message})`);
  }
}

/** The blocks one lane has read and verified, handed to the consumer in order; bounded, so reading pauses. */
class Lane {
  private readonly ready: Array<{ blockIndex: number; data: Promise<Buffer> }> = [];
  private error: unknown;
  private failed = false;
  private wakeConsumer: (() => void) | undefined;
  /** Called when the consumer has taken a block from a full lane. */
  onSpace: (() => void) | undefined;

  get full(): boolean {
    return this.ready.length >= LANE_BLOCKS_AHEAD;
  }

  /** A block in order, its hash still being checked: a mismatch fails the consumer when it takes the block. */
  push(blockIndex: number, data: Promise<Buffer>): void {
    data.catch(() => undefined);
    this.ready.push({ blockIndex, data });
    this.wakeConsumer?.();
  }

  fail(err: unknown): void {
    this.failed = true;
    this.error = err;
    this.wakeConsumer?.();
  }

  async take(blockIndex: number): Promise<Buffer> {
    while (this.ready.length === 0) {
      if (this.failed) throw this.error;
      await new Promise<void>((resolve) => (this.wakeConsumer = resolve));
    }
    const head = this.ready.shift()!;
    if (head.blockIndex !== blockIndex) throw new Error(`lane handed block ${head.blockIndex} for block ${blockIndex}`);
    const data = await head.data;
    if (!this.full) this.onSpace?.();
    return data;
  }
}

interface Frame {
  status: number;
  blockIndex: number;
  body: Buffer;
}

/** Splits the chunk stream into frames as its pieces arrive; each body is its own buffer, for the consumer. */
class FrameParser {
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFilled = 0;
  private body: Buffer | null = null;
  private bodyFilled = 0;
  private status = 0;
  private blockIndex = 0;

  push(piece: Buffer, onFrame: (frame: Frame) => void): void {
    let at = 0;
    while (at < piece.length) {
      if (this.body === null) {
        const n = Math.min(FRAME_HEADER_BYTES - this.headerFilled, piece.length - at);
        piece.copy(this.header, this.headerFilled, at, at + n);
        this.headerFilled += n;
        at += n;
        if (this.headerFilled < FRAME_HEADER_BYTES) return;
        this.status = this.header.readUInt8(0);
        this.blockIndex = this.header.readUInt32BE(1);
        this.body = Buffer.allocUnsafe(this.header.readUInt32BE(5));
        this.bodyFilled = 0;
        this.headerFilled = 0;
      }
      const n = Math.min(this.body.length - this.bodyFilled, piece.length - at);
      piece.copy(this.body, this.bodyFilled, at, at + n);
      this.bodyFilled += n;
      at += n;
      if (this.bodyFilled === this.body.length) {
        const frame = { status: this.status, blockIndex: this.blockIndex, body: this.body };
        this.body = null;
        onFrame(frame);
      }
    }
  }
}
