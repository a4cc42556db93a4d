import { createReadStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import { createHash, type Hash } from 'node:crypto';

/** Buffers in the ring of ofFileReusingBuffers: the one being read ahead, the ones a read may span, and slack. */
const RING_CHUNKS = 5;

/**
 * Sequential reads from a stream of buffers (a file, or one member of a tar read in one pass), with
 * exact-length reads, skips and an optional digest of every byte that passes.
 */
export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private readonly digests: Hash[] = [];
  position = 0;

  constructor(
    private readonly source: AsyncIterator<Buffer>,
    /** Bytes this reader may return in total (a tar member's size), or Infinity. */
    private readonly limit = Infinity,
  ) {}

  static ofFile(file: string, start = 0, end?: number): ByteReader {
    const stream = createReadStream(file, { start, end: end === undefined ? undefined : end - 1, highWaterMark: 4 * 1024 * 1024 });
    return new ByteReader(stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>);
  }

  /**
   * A file read into a small ring of buffers that are filled again as the reader moves on: no allocation,
   * page faults or garbage per chunk. What it hands out is valid only until about RING_CHUNKS - 2 further
   * chunks are read (each chunk 4 MiB), so it is only for consumers that copy or finish with every piece
   * before they read much further (the streamOptimized VMDK reader).
   */
  static ofFileReusingBuffers(file: string): ByteReader {
    const chunkBytes = 4 * 1024 * 1024;
    const source = (async function* () {
      const handle = await fs.open(file, 'r');
      try {
        const ring = Array.from({ length: RING_CHUNKS }, () => Buffer.allocUnsafeSlow(chunkBytes));
        let position = 0;
        let turn = 0;
        const readNext = () => {
          const buf = ring[turn++ % RING_CHUNKS];
          return handle.read(buf, 0, chunkBytes, position).then(({ bytesRead }) => {
            position += bytesRead;
            return buf.subarray(0, bytesRead);
          });
        };
        // One read ahead (started once the one before it is done), so the next chunk arrives while this one is parsed.
        let next = readNext();
        for (;;) {
          const chunk = await next;
          if (chunk.length === 0) return;
          next = readNext();
          next.catch(() => undefined);
          yield chunk;
        }
      } finally {
        await handle.close();
      }
    })();
    return new ByteReader(source);
  }

  /** Digests every byte handed out from now on (and skipped); read them with hash.digest() at the end. */
  digest(algorithm: string): Hash {
    const hash = createHash(algorithm);
    this.digests.push(hash);
    return hash;
  }

  get remaining(): number {
    return this.limit - this.position;
  }

  private async fill(n: number): Promise<boolean> {
    while (this.buffered < n && !this.ended) {
      const next = await this.source.next();
      if (next.done) {
        this.ended = true;
        break;
      }
      if (next.value.length === 0) continue;
      this.chunks.push(next.value);
      this.buffered += next.value.length;
    }
    return this.buffered >= n;
  }

  private take(n: number): Buffer {
    let out: Buffer;
    const first = this.chunks[0];
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let filled = 0;
      while (filled < n) {
        const c = this.chunks[0];
        const use = Math.min(c.length, n - filled);
        c.copy(out, filled, 0, use);
        filled += use;
        if (use === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(use);
      }
    }
    this.buffered -= n;
    this.position += n;
    for (const d of this.digests) d.update(out);
    return out;
  }

  /** Exactly n bytes, or null if the stream ends first (what was there is consumed). */
  async readExact(n: number): Promise<Buffer | null> {
    if (n > this.remaining) {
      await this.skip(this.remaining);
      return null;
    }
    if (n === 0) return Buffer.alloc(0);
    if (!(await this.fill(n))) {
      if (this.buffered > 0) this.take(this.buffered);
      return null;
    }
    return this.take(n);
  }

  /** Skips n bytes; false if the stream ended first. */
  async skip(n: number): Promise<boolean> {
    let left = Math.min(n, this.remaining);
    const withinLimit = left === n;
    while (left > 0) {
      if (!(await this.fill(1))) return false;
      const use = Math.min(left, this.buffered, 16 * 1024 * 1024);
      this.take(use);
      left -= use;
    }
    return withinLimit;
  }

  /** Between 1 and max bytes, whatever is buffered first; null at the end. */
  async readSome(max: number): Promise<Buffer | null> {
    const n = Math.min(max, this.remaining);
    if (n <= 0 || !(await this.fill(1))) return null;
    return this.take(Math.min(n, this.chunks[0].length));
  }

  /** A reader of the next `size` bytes of this one (a tar member); consume it before reading on here. */
  sub(size: number): ByteReader {
    let left = size;
    const readSome = (max: number) => this.readSome(max);
    const source = (async function* () {
      while (left > 0) {
        const piece = await readSome(Math.min(left, 4 * 1024 * 1024));
        if (!piece) return;
        left -= piece.length;
        yield piece;
      }
    })();
    return new ByteReader(source, size);
  }

  /** Stops reading from the source (closing its file), for a reader not read to the end. */
  async close(): Promise<void> {
    this.ended = true;
    this.chunks = [];
    this.buffered = 0;
    await this.source.return?.();
  }

  /** Consumes and discards whatever is left within the limit. */
  async drain(): Promise<boolean> {
    if (this.limit === Infinity) {
      while (await this.fill(1)) this.take(this.buffered);
      return true;
    }
    return this.skip(this.remaining);
  }
}
