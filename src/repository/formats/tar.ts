import { FailureType, RestoreError } from '../../domain/errors';
import { ByteReader } from './stream';

const BLOCK = 512;
const MAX_META_BYTES = 1024 * 1024;

export interface TarMember {
  name: string;
  size: number;
  /** The member's bytes; read (or leave) them before asking for the next member. */
  body: ByteReader;
}

/**
 * A tar archive read in one pass (ustar, pax and GNU long names; regular files only, others skipped).
 * Header checksums are verified.
 */
export class TarReader {
  private current: TarMember | null = null;

  constructor(
    private readonly reader: ByteReader,
    private readonly label: string,
  ) {}

  private fail(what: string): RestoreError {
    return new RestoreError(FailureType.InvalidRequest, `archive ${this.label}: ${what}`);
  }

  private async finishCurrent(): Promise<void> {
    if (!this.current) return;
    const { size, body, name } = this.current;
    this.current = null;
    if (!(await body.drain())) throw this.fail(`member '${name}' is truncated`);
    const pad = (BLOCK - (size % BLOCK)) % BLOCK;
    if (!(await this.reader.skip(pad))) throw this.fail(`member '${name}' is truncated`);
  }

  /** The next regular file, or null at the end of the archive. */
  async next(): Promise<TarMember | null> {
    await this.finishCurrent();
    let longName: string | null = null;
    let paxPath: string | null = null;
    let paxSize: number | null = null;
    for (;;) {
      const at = this.reader.position;
      const header = await this.reader.readExact(BLOCK);
      if (!header) {
        if (this.reader.position === at) return null; // a tar ended without its zero blocks
        throw this.fail(`header at ${at} is truncated`);
      }
      if (header.every((b) => b === 0)) return null;
      const field = (start: number, length: number) => header.toString('latin1', start, start + length).replace(/\0.*$/s, '');
      const stored = parseInt(field(148, 8).trim(), 8);
      let sum = 0;
      for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : header[i];
      if (stored !== sum)
        throw this.fail(`header at ${at} has checksum ${field(148, 8).trim()}, expected ${sum.toString(8)} (not a tar, or damaged)`);
      let size: number;
      if (header[124] & 0x80) {
        let value = 0n;
        for (let i = 125; i < 136; i++) value = (value << 8n) | BigInt(header[i]);
        size = Number(value);
      } else size = parseInt(field(124, 12).trim() || '0', 8);
      if (paxSize !== null) size = paxSize;
      if (!Number.isSafeInteger(size) || size < 0) throw this.fail(`header at ${at} has an invalid size`);
      const type = String.fromCharCode(header[156] || 0x30);
      const prefix = header.toString('latin1', 257, 262) === 'ustar' ? field(345, 155) : '';
      const name = paxPath ?? longName ?? (prefix ? `${prefix}/${field(0, 100)}` : field(0, 100));
      const padded = size + ((BLOCK - (size % BLOCK)) % BLOCK);
      if (type === 'x' || type === 'L') {
        if (size > MAX_META_BYTES) throw this.fail(`extended header at ${at} is ${size} bytes, too large`);
        const data = await this.reader.readExact(padded);
        if (!data) throw this.fail(`extended header at ${at} is truncated`);
        const text = data.toString('utf8', 0, size);
        if (type === 'L') longName = text.replace(/\0.*$/s, '');
        else {
          for (const m of text.matchAll(/(\d+) ([^=]+)=([^\n]*)\n/g)) {
            if (m[2] === 'path') paxPath = m[3];
            if (m[2] === 'size') paxSize = Number(m[3]);
          }
        }
        continue;
      }
      if (type === '0' || type === '7') {
        this.current = { name: name.replace(/^\.\//, ''), size, body: this.reader.sub(size) };
        return this.current;
      }
      // Directories, links, global headers: nothing to read here.
      if (!(await this.reader.skip(padded))) throw this.fail(`member '${name}' is truncated`);
      longName = paxPath = null;
      paxSize = null;
    }
  }
}
