import { readFile, stat } from 'node:fs/promises';
import { FailureType, RestoreError } from '../../domain/errors';
import { BASE_BLOCK_SIZE, HBIN_SIZE, NO_CELL } from './hive-build';
import { MAX_HIVE_BYTES, type RawHiveValue } from './hive-types';

// Read-only parser (enough for listing keys and reading values byte-exact).

export class HiveReader {
  private readonly root: number;
  private readonly minor: number;

  constructor(private readonly buf: Buffer) {
    if (buf.length < BASE_BLOCK_SIZE + HBIN_SIZE || buf.toString('latin1', 0, 4) !== 'regf') {
      throw new RestoreError(FailureType.GuestPreparation, 'not a registry hive (no regf signature)');
    }
    this.minor = buf.readUInt32LE(0x18);
    this.root = buf.readUInt32LE(0x24);
    this.expectSignature(this.root, 'nk');
  }

  static async open(path: string): Promise<HiveReader> {
    const { size } = await stat(path);
    if (size > MAX_HIVE_BYTES) {
      throw new RestoreError(
        FailureType.GuestPreparation,
        `registry hive ${path} is ${size} bytes, over the ${MAX_HIVE_BYTES}-byte limit; refused`,
      );
    }
    return new HiveReader(await readFile(path));
  }

  /** Cell data (after the size field) of the cell at a hive-bins-relative offset. */
  private cell(offset: number): Buffer {
    const at = BASE_BLOCK_SIZE + offset;
    if (offset === NO_CELL || at + 4 > this.buf.length) {
      throw new RestoreError(FailureType.GuestPreparation, `hive cell offset 0x${offset.toString(16)} out of range`);
    }
    const size = Math.abs(this.buf.readInt32LE(at));
    if (size < 8 || at + size > this.buf.length) {
      throw new RestoreError(FailureType.GuestPreparation, `hive cell at 0x${offset.toString(16)} has a bad size`);
    }
    return this.buf.subarray(at + 4, at + size);
  }

  private expectSignature(offset: number, sig: string): Buffer {
    const c = this.cell(offset);
    if (c.toString('latin1', 0, 2) !== sig) {
      throw new RestoreError(FailureType.GuestPreparation, `hive cell at 0x${offset.toString(16)} is not '${sig}'`);
    }
    return c;
  }

  private keyName(nk: Buffer): string {
    const len = nk.readUInt16LE(0x48);
    const flags = nk.readUInt16LE(2);
    return flags & 0x20 ? nk.toString('latin1', 0x4c, 0x4c + len) : nk.toString('utf16le', 0x4c, 0x4c + len);
  }

  private subkeyOffsets(listOffset: number, out: number[] = [], depth = 0): number[] {
    // An index of indexes is one level deep in real hives; a cycle in a hostile one must not recurse forever.
    if (depth > 4) throw new RestoreError(FailureType.GuestPreparation, 'hive subkey index nests too deep (a cycle?)');
    const list = this.cell(listOffset);
    const sig = list.toString('latin1', 0, 2);
    const count = list.readUInt16LE(2);
    if (sig === 'lf' || sig === 'lh') {
      for (let i = 0; i < count; i++) out.push(list.readUInt32LE(4 + 8 * i));
    } else if (sig === 'li') {
      for (let i = 0; i < count; i++) out.push(list.readUInt32LE(4 + 4 * i));
    } else if (sig === 'ri') {
      for (let i = 0; i < count; i++) this.subkeyOffsets(list.readUInt32LE(4 + 4 * i), out, depth + 1);
    } else {
      throw new RestoreError(FailureType.GuestPreparation, `unknown subkey list '${sig}' in hive`);
    }
    return out;
  }

  private children(nkOffset: number): { name: string; offset: number }[] {
    const nk = this.expectSignature(nkOffset, 'nk');
    if (nk.readUInt32LE(0x14) === 0) return [];
    return this.subkeyOffsets(nk.readUInt32LE(0x1c)).map((offset) => ({
      offset,
      name: this.keyName(this.expectSignature(offset, 'nk')),
    }));
  }

  /** Offset of the key at a backslash path below the root (case-insensitive, like Windows), or null. */
  private find(keyPath: string): number | null {
    let at = this.root;
    for (const part of splitKeyPath(keyPath)) {
      const want = part.toUpperCase();
      const hit = this.children(at).find((c) => c.name.toUpperCase() === want);
      if (!hit) return null;
      at = hit.offset;
    }
    return at;
  }

  rootName(): string {
    return this.keyName(this.cell(this.root));
  }

  keyExists(keyPath: string): boolean {
    return this.find(keyPath) !== null;
  }

  /** Subkey names of a key in stored order, or null when the key does not exist. */
  subkeys(keyPath: string): string[] | null {
    const at = this.find(keyPath);
    return at === null ? null : this.children(at).map((c) => c.name);
  }

  /** All values of a key with their raw data, or null when the key does not exist. */
  values(keyPath: string): RawHiveValue[] | null {
    const at = this.find(keyPath);
    if (at === null) return null;
    const nk = this.cell(at);
    const count = nk.readUInt32LE(0x24);
    if (count === 0) return [];
    const list = this.cell(nk.readUInt32LE(0x28));
    const out: RawHiveValue[] = [];
    for (let i = 0; i < count; i++) {
      const vk = this.expectSignature(list.readUInt32LE(4 * i), 'vk');
      const nameLen = vk.readUInt16LE(2);
      const name = vk.readUInt16LE(0x10) & 1 ? vk.toString('latin1', 0x14, 0x14 + nameLen) : vk.toString('utf16le', 0x14, 0x14 + nameLen);
      out.push({ name, regType: vk.readUInt32LE(0x0c), data: this.valueData(vk) });
    }
    return out;
  }

  value(keyPath: string, name: string): RawHiveValue | null {
    const want = name.toUpperCase();
    return this.values(keyPath)?.find((v) => v.name.toUpperCase() === want) ?? null;
  }

  private valueData(vk: Buffer): Buffer {
    const rawSize = vk.readUInt32LE(4);
    const size = rawSize & 0x7fffffff;
    if (rawSize & 0x80000000) return Buffer.from(vk.subarray(8, 8 + Math.min(size, 4)));
    if (size === 0) return Buffer.alloc(0);
    const cell = this.cell(vk.readUInt32LE(8));
    // Values over 16344 bytes live in "big data" segments on hives of version 1.4 and later.
    if (size > 16344 && this.minor >= 4 && cell.toString('latin1', 0, 2) === 'db') {
      const segments = cell.readUInt16LE(2);
      const list = this.cell(cell.readUInt32LE(4));
      const parts: Buffer[] = [];
      for (let i = 0; i < segments; i++) parts.push(this.cell(list.readUInt32LE(4 * i)).subarray(0, 16344));
      return Buffer.concat(parts).subarray(0, size);
    }
    return Buffer.from(cell.subarray(0, size));
  }
}

export function splitKeyPath(keyPath: string): string[] {
  return keyPath.split('\\').filter((p) => p.length > 0);
}

// ---------------------------------------------------------------------------------------------------
