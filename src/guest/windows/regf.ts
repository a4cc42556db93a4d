/**
 * Windows registry hive files (regf): a minimal hive generator, a small read-only parser, and edits
 * through hivex's `hivexsh`/`hivexget`.
 *
 * hivex can open and grow a hive but not create one, and no Debian tool writes an empty hive, so
 * `buildEmptyHive` lays out the smallest hive Windows and hivex accept: a 4 KiB base block and one
 * 4 KiB hbin holding the root key and its security cell. Layout per the publicly documented format
 * (libyal "Windows NT Registry File (REGF) format"; hivex lib/hivex-internal.h).
 *
 * `hivexsh setval` replaces every value of a key, so single-value edits read the key's current values
 * byte-exact with the parser below and write them all back.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../exec';

export const RegType = {
  None: 0,
  String: 1,
  ExpandString: 2,
  Binary: 3,
  Dword: 4,
  DwordBigEndian: 5,
  Link: 6,
  MultiString: 7,
  ResourceList: 8,
  FullResourceDescriptor: 9,
  ResourceRequirementsList: 10,
  Qword: 11,
} as const;

export type HiveValueData =
  | { type: 'string'; value: string }
  | { type: 'expandString'; value: string }
  | { type: 'multiString'; value: string[] }
  | { type: 'dword'; value: number }
  | { type: 'qword'; value: bigint }
  | { type: 'binary'; value: Buffer }
  /** Any registry type kept byte-exact (also what the parser returns, so edits never re-encode). */
  | { type: 'raw'; regType: number; value: Buffer };

export interface HiveKeySpec {
  /** Backslash-separated path below the root, e.g. `ControlSet001\Services\Dhcp`. Missing parents are created. */
  path: string;
  /** Value name → data; the empty name is the key's default value. */
  values?: Record<string, HiveValueData>;
}

export interface HiveEdit {
  keyPath: string;
  name: string;
  /** null deletes the value. */
  value: HiveValueData | null;
}

export interface RawHiveValue {
  name: string;
  regType: number;
  data: Buffer;
}

const BASE_BLOCK_SIZE = 0x1000;
const HBIN_SIZE = 0x1000;
const HBIN_HEADER_SIZE = 0x20;
const NO_CELL = 0xffffffff;
/**
 * hivexsh reads scripted input with fgets into an 8192-byte buffer: a longer line is split and its
 * remainder read as the next line, which can shift a setval block so that guest data (a value name)
 * lands where a command is expected (`commit <path>` writes the hive anywhere). Every line we emit is
 * checked against this limit in bytes and refused, never truncated.
 */
export const HIVEXSH_MAX_LINE = 8000;
/** hivexsh's setval takes at most this many values. */
const HIVEXSH_MAX_VALUES = 1000;
/** Hives are read whole; a real SOFTWARE hive is well under this. */
export const MAX_HIVE_BYTES = 512 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------------
// Empty hive generator

const align8 = (n: number) => (n + 7) & ~7;

function sid(authority: number, ...subAuthorities: number[]): Buffer {
  const b = Buffer.alloc(8 + 4 * subAuthorities.length);
  b[0] = 1;
  b[1] = subAuthorities.length;
  b.writeUIntBE(authority, 2, 6);
  subAuthorities.forEach((s, i) => b.writeUInt32LE(s >>> 0, 8 + 4 * i));
  return b;
}

function accessAllowedAce(flags: number, mask: number, who: Buffer): Buffer {
  const b = Buffer.alloc(8 + who.length);
  b[0] = 0; // ACCESS_ALLOWED_ACE_TYPE
  b[1] = flags;
  b.writeUInt16LE(b.length, 2);
  b.writeUInt32LE(mask >>> 0, 4);
  who.copy(b, 8);
  return b;
}

/**
 * The root key's self-relative security descriptor: owner Administrators, group SYSTEM, and the DACL
 * Windows puts on hive roots (Administrators and SYSTEM full control, Users read, CREATOR OWNER full
 * on subkeys), inherited by every key hivex adds.
 */
export function defaultKeySecurityDescriptor(): Buffer {
  const KEY_ALL_ACCESS = 0x000f003f;
  const KEY_READ = 0x00020019;
  const GENERIC_ALL = 0x10000000;
  const CI = 0x02;
  const IO = 0x08;
  const administrators = sid(5, 32, 544);
  const system = sid(5, 18);
  const users = sid(5, 32, 545);
  const creatorOwner = sid(3, 0);
  const aces = [
    accessAllowedAce(CI, KEY_ALL_ACCESS, administrators),
    accessAllowedAce(CI, KEY_ALL_ACCESS, system),
    accessAllowedAce(CI, KEY_READ, users),
    accessAllowedAce(CI | IO, GENERIC_ALL, creatorOwner),
  ];
  const aceBytes = Buffer.concat(aces);
  const acl = Buffer.alloc(8);
  acl[0] = 2; // ACL_REVISION
  acl.writeUInt16LE(8 + aceBytes.length, 2);
  acl.writeUInt16LE(aces.length, 4);
  const dacl = Buffer.concat([acl, aceBytes]);

  const header = Buffer.alloc(20);
  header[0] = 1; // revision
  // SE_SELF_RELATIVE | SE_DACL_PROTECTED | SE_DACL_PRESENT: a hive root has nothing to inherit from.
  header.writeUInt16LE(0x8000 | 0x1000 | 0x0004, 2);
  const daclOffset = 20;
  const ownerOffset = daclOffset + dacl.length;
  const groupOffset = ownerOffset + administrators.length;
  header.writeUInt32LE(ownerOffset, 4);
  header.writeUInt32LE(groupOffset, 8);
  header.writeUInt32LE(0, 12); // no SACL
  header.writeUInt32LE(daclOffset, 16);
  return Buffer.concat([header, dacl, administrators, system]);
}

/** Windows FILETIME (100 ns ticks since 1601-01-01) of a JS date. */
export function toFileTime(date: Date): bigint {
  return (BigInt(date.getTime()) + 11644473600000n) * 10000n;
}

function baseBlockChecksum(block: Buffer): number {
  let sum = 0;
  for (let i = 0; i < 0x1fc; i += 4) sum ^= block.readUInt32LE(i);
  return sum >>> 0;
}

export interface EmptyHiveOptions {
  /** Name of the root key. Windows names it after the hive's load point; any name works offline. */
  rootName?: string;
  /** Original file name recorded in the base block, e.g. `\SystemRoot\System32\Config\SYSTEM`. */
  fileName?: string;
  /** Timestamp written to the base block, hbin and root key (deterministic images pass a fixed one). */
  timestamp?: Date;
}

/** Bytes of an empty but valid hive: base block + one hbin with the root nk cell and its sk cell. */
export function buildEmptyHive(opts: EmptyHiveOptions = {}): Buffer {
  const rootName = opts.rootName ?? 'ROOT';
  if (!/^[\x20-\x7e]{1,255}$/.test(rootName) || rootName.includes('\\')) {
    throw new RestoreError(FailureType.InvalidRequest, `invalid hive root key name '${rootName}'`);
  }
  let fileTime = toFileTime(opts.timestamp ?? new Date());
  const hive = Buffer.alloc(BASE_BLOCK_SIZE + HBIN_SIZE);

  // hbin: cells are addressed relative to the start of the hive bins data (file offset 0x1000).
  const bin = hive.subarray(BASE_BLOCK_SIZE);
  bin.write('hbin', 0, 'latin1');
  bin.writeUInt32LE(0, 4); // offset of this bin
  bin.writeUInt32LE(HBIN_SIZE, 8);
  bin.writeBigUInt64LE(fileTime, 0x14);

  const nkOffset = HBIN_HEADER_SIZE;
  const nkSize = align8(4 + 0x4c + rootName.length);
  const skOffset = nkOffset + nkSize;
  const sd = defaultKeySecurityDescriptor();
  const skSize = align8(4 + 0x14 + sd.length);
  const freeOffset = skOffset + skSize;

  // Root key (nk). Field offsets are relative to the cell data, after the 4-byte cell size.
  bin.writeInt32LE(-nkSize, nkOffset);
  const nk = bin.subarray(nkOffset + 4, nkOffset + nkSize);
  nk.write('nk', 0, 'latin1');
  nk.writeUInt16LE(0x2c, 2); // KEY_HIVE_ENTRY | KEY_NO_DELETE | KEY_COMP_NAME
  nk.writeBigUInt64LE(fileTime, 4);
  nk.writeUInt32LE(NO_CELL, 0x10); // parent: none for the hive root
  nk.writeUInt32LE(0, 0x14); // subkeys
  nk.writeUInt32LE(0, 0x18); // volatile subkeys
  nk.writeUInt32LE(NO_CELL, 0x1c); // subkey list
  nk.writeUInt32LE(NO_CELL, 0x20); // volatile subkey list
  nk.writeUInt32LE(0, 0x24); // values
  nk.writeUInt32LE(NO_CELL, 0x28); // value list
  nk.writeUInt32LE(skOffset, 0x2c); // security cell
  nk.writeUInt32LE(NO_CELL, 0x30); // class name
  nk.writeUInt16LE(rootName.length, 0x48);
  nk.writeUInt16LE(0, 0x4a);
  nk.write(rootName, 0x4c, 'latin1');

  // Security (sk): the only one, so its list links point to itself.
  bin.writeInt32LE(-skSize, skOffset);
  const sk = bin.subarray(skOffset + 4, skOffset + skSize);
  sk.write('sk', 0, 'latin1');
  sk.writeUInt32LE(skOffset, 4); // flink
  sk.writeUInt32LE(skOffset, 8); // blink
  sk.writeUInt32LE(1, 0x0c); // reference count: the root key
  sk.writeUInt32LE(sd.length, 0x10);
  sd.copy(sk, 0x14);

  // The rest of the bin is one free cell (positive size).
  bin.writeInt32LE(HBIN_SIZE - freeOffset, freeOffset);

  const base = hive.subarray(0, BASE_BLOCK_SIZE);
  base.write('regf', 0, 'latin1');
  base.writeUInt32LE(1, 4); // primary sequence number
  base.writeUInt32LE(1, 8); // secondary sequence number: equal means the hive is clean
  base.writeUInt32LE(1, 0x14); // major version
  base.writeUInt32LE(3, 0x18); // minor version
  base.writeUInt32LE(0, 0x1c); // file type: primary
  base.writeUInt32LE(1, 0x20); // file format: direct memory load
  base.writeUInt32LE(nkOffset, 0x24); // root cell offset
  base.writeUInt32LE(HBIN_SIZE, 0x28); // hive bins data size
  base.writeUInt32LE(1, 0x2c); // clustering factor
  if (opts.fileName) {
    // 64 bytes of UTF-16LE; Windows stores only the tail of long paths.
    const name = Buffer.from(opts.fileName.slice(-31), 'utf16le');
    name.copy(base, 0x30);
  }
  for (;;) {
    base.writeBigUInt64LE(fileTime, 0x0c);
    const sum = baseBlockChecksum(base);
    // Windows stores 0 and 0xFFFFFFFF as 1 and 0xFFFFFFFE while hivex compares the raw XOR;
    // moving the timestamp by one tick avoids the two values where they disagree.
    if (sum !== 0 && sum !== 0xffffffff) {
      base.writeUInt32LE(sum, 0x1fc);
      break;
    }
    fileTime += 1n;
  }
  return hive;
}

// ---------------------------------------------------------------------------------------------------
// Read-only parser (enough for listing keys and reading values byte-exact)

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
// Value encoding

function utf16z(s: string): Buffer {
  return Buffer.from(`${s}\0`, 'utf16le');
}

export function encodeValue(v: HiveValueData): { regType: number; data: Buffer } {
  switch (v.type) {
    case 'string':
      return { regType: RegType.String, data: utf16z(v.value) };
    case 'expandString':
      return { regType: RegType.ExpandString, data: utf16z(v.value) };
    case 'multiString':
      return { regType: RegType.MultiString, data: Buffer.from(`${v.value.map((s) => `${s}\0`).join('')}\0`, 'utf16le') };
    case 'dword': {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(v.value >>> 0);
      return { regType: RegType.Dword, data: b };
    }
    case 'qword': {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt.asUintN(64, v.value));
      return { regType: RegType.Qword, data: b };
    }
    case 'binary':
      return { regType: RegType.Binary, data: v.value };
    case 'raw':
      return { regType: v.regType, data: v.value };
  }
}

/** Decodes raw registry data into the friendliest HiveValueData that re-encodes to the same bytes. */
export function decodeValue(regType: number, data: Buffer): HiveValueData {
  if (regType === RegType.Dword && data.length === 4) return { type: 'dword', value: data.readUInt32LE(0) };
  if (regType === RegType.Qword && data.length === 8) return { type: 'qword', value: data.readBigUInt64LE(0) };
  if (regType === RegType.Binary) return { type: 'binary', value: data };
  if ((regType === RegType.String || regType === RegType.ExpandString) && data.length % 2 === 0) {
    const s = data.toString('utf16le');
    if (s.endsWith('\0') && !s.slice(0, -1).includes('\0')) {
      return { type: regType === RegType.String ? 'string' : 'expandString', value: s.slice(0, -1) };
    }
  }
  if (regType === RegType.MultiString && data.length % 2 === 0) {
    const s = data.toString('utf16le');
    if (s.endsWith('\0\0') || s === '\0') {
      const list = s === '\0' ? [] : s.slice(0, -2).split('\0');
      if (encodeValue({ type: 'multiString', value: list }).data.equals(data)) return { type: 'multiString', value: list };
    }
  }
  return { type: 'raw', regType, value: data };
}

/** The value as text, the way change records show it: dwords in decimal, strings as is. */
export function hiveValueText(v: HiveValueData): string {
  switch (v.type) {
    case 'string':
    case 'expandString':
      return v.value;
    case 'multiString':
      return v.value.join('\n');
    case 'dword':
      return String(v.value);
    case 'qword':
      return v.value.toString();
    case 'binary':
    case 'raw':
      return v.value.toString('hex');
  }
}

/** The `value>` line of a hivexsh setval block. */
function setvalLine(regType: number, data: Buffer): string {
  if (regType === RegType.Dword && data.length === 4) return `dword:0x${data.readUInt32LE(0).toString(16)}`;
  if ((regType === RegType.String || regType === RegType.ExpandString) && data.length >= 2 && data.length % 2 === 0) {
    const s = data.toString('utf16le');
    // hivexsh's string: form takes 7-bit text and adds exactly one terminating NUL.
    if (/^[\x20-\x7e]*\0$/.test(s)) return `${regType === RegType.String ? 'string' : 'expandstring'}:${s.slice(0, -1)}`;
  }
  return `hex:${regType}:${data.toString('hex')}`;
}

/** A bounded rendering of a registry name for messages. */
function shown(name: string): string {
  return name.length > 80 ? `${JSON.stringify(name.slice(0, 80))}… (${name.length} characters)` : JSON.stringify(name);
}

/**
 * The key line of a setval block. hivexsh takes it verbatim (no trimming, no comment skipping) and hivex
 * encodes its UTF-8 as Latin-1 or UTF-16; control characters (a newline would end the line early) and
 * text that does not survive UTF-8 (lone surrogates) are refused, and so are names over the line limit.
 */
function hivexshKeyLine(name: string, where: string): string {
  if (name === '') return '@';
  // eslint-disable-next-line no-control-regex
  if (name === '@' || /[\x00-\x1f\x7f-\x9f]/.test(name) || Buffer.from(name, 'utf8').toString('utf8') !== name) {
    throw new RestoreError(
      FailureType.GuestPreparation,
      `registry value name ${shown(name)} in ${where} cannot be written back through hivexsh (control characters or invalid text); refused`,
    );
  }
  return checkLine(name, `value name ${shown(name)} in ${where}`);
}

function checkLine(line: string, what: string): string {
  const bytes = Buffer.byteLength(line);
  if (bytes > HIVEXSH_MAX_LINE) {
    throw new RestoreError(
      FailureType.GuestPreparation,
      `${what} is too large (${bytes} bytes, over hivexsh's ${HIVEXSH_MAX_LINE}-byte line limit) to be written through hivexsh; refused`,
    );
  }
  return line;
}

function setvalBlock(values: RawHiveValue[], where: string): string[] {
  if (values.length > HIVEXSH_MAX_VALUES) {
    throw new RestoreError(
      FailureType.GuestPreparation,
      `registry key ${where} has ${values.length} values; hivexsh rewrites at most ${HIVEXSH_MAX_VALUES}; refused`,
    );
  }
  const lines = [`setval ${values.length}`];
  for (const v of values) {
    lines.push(hivexshKeyLine(v.name, where));
    lines.push(checkLine(setvalLine(v.regType, v.data), `value ${shown(v.name)} of ${where}`));
  }
  return lines;
}

/** Key names in `cd` and `add` lines: hivexsh trims these lines and skips those starting with `#`. */
function checkKeyName(name: string, keyPath: string): string {
  if (!/^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(name) || name === '.' || name === '..') {
    throw new RestoreError(FailureType.GuestPreparation, `registry key path ${shown(keyPath)} cannot be written with hivexsh; refused`);
  }
  return name;
}

function cdLine(keyPath: string): string {
  const parts = splitKeyPath(keyPath).map((p) => checkKeyName(p, keyPath));
  // `cd \` plus a trailing element list; the root alone needs the backslash followed by nothing.
  return checkLine(`cd \\${parts.join('\\')}`, `registry key path ${shown(keyPath)}`);
}

/** hivexsh creates ~/.hivexsh (readline history) even when scripted; without HOME it leaves no trace. */
const NO_HISTORY = { HOME: undefined };

async function runHivexsh(hivePath: string, script: string[]): Promise<void> {
  script.push('commit', 'quit');
  for (const line of script) {
    // eslint-disable-next-line no-control-regex
    if (/[\x00\n\r]/.test(line)) throw new RestoreError(FailureType.GuestPreparation, `unsafe hivexsh input line ${shown(line)}; refused`);
    checkLine(line, `hivexsh input line ${shown(line)}`);
  }
  await run('hivexsh', ['-w', hivePath], {
    input: `${script.join('\n')}\n`,
    timeoutMs: 120_000,
    env: NO_HISTORY,
  });
}

/**
 * Lines that create `keyPath` (and missing parents) given the keys known to exist; updates `known`.
 * `known` holds upper-cased paths.
 */
function addKeyLines(keyPath: string, known: Set<string>, reader: HiveReader | null): string[] {
  const parts = splitKeyPath(keyPath);
  const lines: string[] = [];
  for (let i = 0; i < parts.length; i++) {
    const sub = parts.slice(0, i + 1).join('\\');
    const upper = sub.toUpperCase();
    if (known.has(upper)) continue;
    if (reader?.keyExists(sub)) {
      known.add(upper);
      continue;
    }
    lines.push(
      cdLine(parts.slice(0, i).join('\\')),
      checkLine(`add ${checkKeyName(parts[i]!, keyPath)}`, `registry key ${shown(keyPath)}`),
    );
    known.add(upper);
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------------
// Public file-level API

/** Writes a new hive at `path` holding `keys` (and their parents) with their values. */
export async function createHive(path: string, keys: HiveKeySpec[], opts: EmptyHiveOptions = {}): Promise<void> {
  await writeFile(path, buildEmptyHive(opts));
  if (keys.length === 0) return;
  const known = new Set<string>();
  const script: string[] = [];
  for (const key of keys) {
    script.push(...addKeyLines(key.path, known, null));
    const values = Object.entries(key.values ?? {}).map(([name, v]) => ({ name, ...encodeValue(v) }));
    if (values.length > 0) {
      script.push(
        cdLine(key.path),
        ...setvalBlock(
          values.map((v) => ({ name: v.name, regType: v.regType, data: v.data })),
          key.path,
        ),
      );
    }
  }
  await runHivexsh(path, script);
}

/**
 * Sets or deletes values, creating missing keys, in one hivexsh run. Untouched values of an edited key
 * are written back byte-exact. Returns false (and leaves the file alone) when every edit was a no-op.
 */
export async function setHiveValues(path: string, edits: HiveEdit[]): Promise<boolean> {
  const reader = await HiveReader.open(path);
  const byKey = new Map<string, { keyPath: string; edits: HiveEdit[] }>();
  for (const e of edits) {
    const k = splitKeyPath(e.keyPath).join('\\').toUpperCase();
    const entry = byKey.get(k) ?? { keyPath: e.keyPath, edits: [] };
    entry.edits.push(e);
    byKey.set(k, entry);
  }
  const known = new Set<string>();
  const script: string[] = [];
  for (const { keyPath, edits: keyEdits } of byKey.values()) {
    const current = reader.values(keyPath);
    const values: RawHiveValue[] = current ? [...current] : [];
    let changed = current === null;
    for (const e of keyEdits) {
      const idx = values.findIndex((v) => v.name.toUpperCase() === e.name.toUpperCase());
      if (e.value === null) {
        if (idx >= 0) {
          values.splice(idx, 1);
          changed = true;
        }
        continue;
      }
      const enc = encodeValue(e.value);
      const next = { name: idx >= 0 ? values[idx]!.name : e.name, regType: enc.regType, data: enc.data };
      if (idx >= 0) {
        const prev = values[idx]!;
        if (prev.regType === next.regType && prev.data.equals(next.data)) continue;
        values[idx] = next;
      } else {
        values.push(next);
      }
      changed = true;
    }
    if (!changed) continue;
    if (current === null && values.length === 0 && keyEdits.every((e) => e.value === null)) continue;
    script.push(...addKeyLines(keyPath, known, reader));
    script.push(cdLine(keyPath), ...setvalBlock(values, keyPath || '<root>'));
  }
  if (script.length === 0) return false;
  await runHivexsh(path, script);
  return true;
}

/**
 * Reads one value through `hivexget` (which prints a key's values in hivexsh's regedit-like format),
 * or null when the key or value is missing.
 */
export async function getHiveValue(path: string, keyPath: string, valueName: string): Promise<HiveValueData | null> {
  const r = await run('hivexget', [path, `\\${splitKeyPath(keyPath).join('\\')}`], {
    allowExit: [1],
    env: NO_HISTORY,
    timeoutMs: 120_000,
  });
  if (r.code !== 0) {
    if (/not found/i.test(r.stderr)) return null;
    throw new RestoreError(FailureType.GuestPreparation, `hivexget ${path} ${keyPath} failed: ${r.stderr.trim()}`);
  }
  for (const line of r.stdout.split('\n')) {
    const parsed = parseLsvalLine(line);
    if (parsed && parsed.name.toUpperCase() === valueName.toUpperCase()) return parsed.value;
  }
  return null;
}

/** Parses one line of `hivexsh lsval` output: `"name"=dword:00000001`, `"name"="text"`, `"name"=hex(3):00,01`. */
export function parseLsvalLine(line: string): { name: string; value: HiveValueData } | null {
  if (!line.startsWith('"')) return null;
  let i = 1;
  let name = '';
  for (; i < line.length && line[i] !== '"'; i++) {
    if (line[i] === '\\' && i + 1 < line.length) i++;
    name += line[i];
  }
  if (line[i + 1] !== '=') return null;
  if (name === '@') name = '';
  const rest = line.slice(i + 2);
  const unquote = (q: string) => q.slice(1, -1).replace(/\\(["\\])/g, '$1');
  if (rest.startsWith('dword:')) return { name, value: { type: 'dword', value: parseInt(rest.slice(6), 16) >>> 0 } };
  if (rest.startsWith('"')) return { name, value: { type: 'string', value: unquote(rest) } };
  const str = /^str\((\d+)\):(".*")$/.exec(rest);
  if (str) {
    const t = Number(str[1]);
    const value = unquote(str[2]!);
    return {
      name,
      value: t === RegType.ExpandString ? { type: 'expandString', value } : { type: 'raw', regType: t, value: utf16z(value) },
    };
  }
  const hex = /^hex\((\d+)\):([0-9a-f,]*)$/i.exec(rest);
  if (hex) return { name, value: decodeValue(Number(hex[1]), Buffer.from(hex[2]!.replace(/,/g, ''), 'hex')) };
  return null;
}

/**
 * Runs hivexml over the hive; resolves with the XML and rejects when hivex cannot parse the hive.
 * hivexml opens /dev/stdout by name, which fails on the socket pipes Node gives children, so its
 * output goes through a temporary file.
 */
export async function hiveToXml(path: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'hivexml-'));
  try {
    const out = join(dir, 'hive.xml');
    await run('hivexml', [path], { stdoutFile: out, maxStdoutBytes: 4 * MAX_HIVE_BYTES, timeoutMs: 120_000 });
    return await readFile(out, 'utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
