import { FailureType, RestoreError } from '../../domain/errors';

// The empty hive generator: the smallest hive Windows and hivex accept.

export const BASE_BLOCK_SIZE = 0x1000;
export const HBIN_SIZE = 0x1000;
const HBIN_HEADER_SIZE = 0x20;
export const NO_CELL = 0xffffffff;

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
