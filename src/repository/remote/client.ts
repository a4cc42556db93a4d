import { readFileSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { RepositoryConfig } from '../../config/schema';
import { FailureType, RestoreError } from '../../domain/errors';
import { createAgent, TLS_TRUST_ERROR_CODES } from '../../vsphere/tls';
import { badChunkError, blockLength, findDisk, validateRestorePoint, type RestorePoint, type RestorePointSummary } from '../format';
import { checkedReadOptions, type DiskBlock, type ReadDiskBlocksOptions } from '../reader';
import { checkVmMatchesDisks } from '../restore-points';
import type { RepositorySource } from '../source';
import { startStreamThread } from './stream-thread';
import {
  CHUNK_STREAM_TYPE,
  chunksUrlPath,
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
  /**
   * Chunk streams per disk read, each on a connection and a thread of its own (default 1). More pay off
   * where cores are free: on a loaded two-core machine one stream reads fastest.
   */
  streamsPerDisk?: number;
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
  private readonly streamsPerDisk: number;
  private readonly ca: string | Buffer | undefined;
  /** The pinned SHA-256 fingerprint, bare upper-case hex. */
  private readonly pin: string | undefined;

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
    this.streamsPerDisk = Math.max(1, Math.min(MAX_LANES, opts.streamsPerDisk ?? 1));
    this.ca = opts.ca;
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
    return new RemoteRepository({
      url: repo.url,
      token: loadRepositoryToken(repo, env),
      ca,
      thumbprint: repo.thumbprint,
      streamsPerDisk: repo.streamsPerDisk,
    });
  }

  close(): void {
    this.agent.destroy();
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
   * `streamsPerDisk` streams ("lanes") read the disk at once, lane k the blocks i with i ≡ k (mod lanes), so
   * all lanes advance together through the disk and each holds only LANE_BLOCKS_AHEAD blocks ahead of the
   * consumer. `concurrency` is only checked, for the contract of `readDiskBlocks`.
   */
  async *readDiskBlocks(rp: RestorePoint, diskIndex: number, opts: ReadDiskBlocksOptions = {}): AsyncGenerator<DiskBlock, void, undefined> {
    const { disk, fromOffset } = checkedReadOptions(rp, diskIndex, opts);
    const { blockSize } = rp;
    const total = disk.blocks.length;
    const first = fromOffset === disk.capacityBytes ? total : Math.floor(fromOffset / blockSize);
    const stop = new AbortController();
    const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
    const laneCount = this.streamsPerDisk;
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
      // The digest was taken on the stream's thread, of the bytes received: the server's word counts for nothing.
      if (frame.sha256 !== hash)
        throw badChunkError(rp, diskIndex, offset, hash, `is corrupt (sha256 mismatch; served by ${this.location})`);
      position.lastProgress = Date.now();
      attempt = 0;
      position.next += step;
      lane.push(frame.blockIndex, frame.body);
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
   * One chunk stream on a TLS connection and a thread of its own (see stream-thread.ts): node's HTTP client
   * pauses and resumes its socket for every 16 KiB record and leaves decryption and hashing on one thread,
   * which costs more than half the throughput of a plain download. Each frame goes to `accept` in order.
   */
  private streamChunks(path: string, lane: Lane, accept: (frame: Frame) => void, signal: AbortSignal): Promise<void> {
    const url = new URL(this.location);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    return new Promise<void>((resolve, reject) => {
      signal.throwIfAborted();
      let settled = false;
      const finish = (err?: unknown): void => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        lane.onTaken = undefined;
        thread.close();
        if (err === undefined) resolve();
        else reject(err);
      };
      const onAbort = (): void => finish(signal.reason);
      const thread = startStreamThread(
        {
          host,
          port: Number(url.port || 443),
          servername: net.isIP(host) ? undefined : host,
          ca: this.ca,
          pin: this.pin,
          request: `GET ${path} HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: ${this.authorization}\r\nConnection: close\r\n\r\n`,
          ahead: LANE_BLOCKS_AHEAD,
          streamType: CHUNK_STREAM_TYPE,
        },
        (m) => {
          try {
            switch (m.type) {
              case 'frame':
                return accept({ ...m, body: Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength) });
              case 'end':
                return finish(m.complete ? undefined : new Unreachable('the chunk stream was cut'));
              case 'error':
                return finish(Object.assign(new Error(m.message), { code: m.code }));
              case 'foreign':
                return finish(
                  new RestoreError(
                    FailureType.Configuration,
                    `${this.location} answered a chunk read with '${m.contentType}': is it a vmrestore data mover?`,
                  ),
                );
              case 'http': {
                let body: Partial<ErrorBody> | undefined;
                try {
                  body = JSON.parse(m.body) as Partial<ErrorBody>;
                } catch {
                  body = undefined;
                }
                return finish(this.httpError(path, m.status, body));
              }
            }
          } catch (err) {
            finish(err);
          }
        },
      );
      signal.addEventListener('abort', onAbort);
      lane.onTaken = () => thread.taken();
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

/** The blocks one lane has read and verified, handed to the consumer in order. */
class Lane {
  private readonly ready: Array<{ blockIndex: number; data: Buffer }> = [];
  private error: unknown;
  private failed = false;
  private wakeConsumer: (() => void) | undefined;
  /** Tells the stream that one more block may be read (it stays at most LANE_BLOCKS_AHEAD ahead). */
  onTaken: (() => void) | undefined;

  push(blockIndex: number, data: Buffer): void {
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
    this.onTaken?.();
    if (head.blockIndex !== blockIndex) throw new Error(`lane handed block ${head.blockIndex} for block ${blockIndex}`);
    return head.data;
  }
}

interface Frame {
  status: number;
  blockIndex: number;
  /** SHA-256 of the body as received, hex (empty for an error frame). */
  sha256: string;
  body: Buffer;
}
