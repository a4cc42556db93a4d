import { promises as fsp } from 'node:fs';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../exec';
import { probeFilesystem, readPartitionTable, type PartitionEntry } from './partition';
import { sectorChange, type BootChange } from './boot-change';

/**
 * GPT to MBR conversion of a whole-disk image, for BIOS firmware (Azure Generation 1). Partitions keep
 * their exact sectors; only the table changes. What cannot be expressed in an MBR is refused before
 * anything is written: a disk beyond 2 TiB, more than four partitions that must stay, unknown types.
 *
 * Partitions that exist only for GPT/UEFI and hold no data a BIOS system needs are dropped: the
 * Microsoft reserved partition and GRUB's BIOS boot partition. The EFI system partition is kept as an
 * ordinary type-0xEF partition while it fits into the four entries (its files stay readable, the
 * guest's `/boot/efi` mount keeps working, and a later move back to UEFI needs no new partition); only
 * when keeping it would need a fifth entry is it dropped, its sectors left as they are.
 */

export const SECTOR = 512;
/** An MBR entry holds 32-bit sector numbers: 2 TiB with 512-byte sectors. */
export const MBR_MAX_SECTORS = 2 ** 32;
export const MBR_MAX_BYTES = MBR_MAX_SECTORS * SECTOR;

const GPT = {
  efi: 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  msr: 'E3C9E316-0B5C-4DB8-817D-F92DF00215AE',
  biosBoot: '21686148-6449-6E6F-744E-656564454649',
  basicData: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
  winRecovery: 'DE94BBA4-06D1-4D40-A16A-BFD50179D6AC',
} as const;

/** GPT type GUID → MBR type byte, for types whose MBR code does not depend on the filesystem. */
const FIXED_TYPES: Record<string, { code: number; name: string }> = {
  [GPT.efi]: { code: 0xef, name: 'EFI system partition' },
  [GPT.winRecovery]: { code: 0x27, name: 'Windows recovery' },
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': { code: 0x83, name: 'Linux filesystem' },
  '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709': { code: 0x83, name: 'Linux root (x86-64)' },
  '44479540-F297-41B2-9AF7-D131D5F0458A': { code: 0x83, name: 'Linux root (x86)' },
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': { code: 0x83, name: 'Linux /home' },
  '3B8F8425-20E0-4F3B-907F-1A25A76F98E8': { code: 0x83, name: 'Linux /srv' },
  '4D21B016-B534-45C2-A9FB-5C16E091FD2D': { code: 0x83, name: 'Linux /var' },
  'BC13C2FF-59E6-4262-A352-B275FD6F7172': { code: 0xea, name: 'Linux extended boot' },
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': { code: 0x82, name: 'Linux swap' },
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': { code: 0x8e, name: 'Linux LVM' },
  'A19D880F-05FC-4D3B-A006-743F0F84911E': { code: 0xfd, name: 'Linux RAID' },
  'CA7D7CCB-63ED-4C53-861C-1742536059CC': { code: 0xe8, name: 'Linux LUKS' },
};

const DROPPED_ALWAYS: Record<string, string> = {
  [GPT.msr]: 'Microsoft reserved partition: GPT-only, holds no filesystem',
  [GPT.biosBoot]: "BIOS boot partition: GPT-only home of GRUB's core image, not needed with an MBR",
};

export interface GptHeaderInfo {
  /** LBA of the backup header (normally the last sector). */
  backupHeaderLba: number;
  primaryEntriesLba: number;
  backupEntriesLba: number;
  entriesSectors: number;
  /** First 4 bytes of the disk GUID as stored, used as the MBR disk signature. */
  diskGuidHead: number;
}

export interface MbrEntryPlan {
  /** MBR slot, 1..4 (Linux numbering: sda1..sda4). */
  mbrIndex: number;
  gptIndex: number;
  startLba: number;
  sectors: number;
  typeCode: number;
  bootable: boolean;
  /** What it is, for messages and change lists. */
  label: string;
}

export interface DroppedPartition {
  gptIndex: number;
  startLba: number;
  sectors: number;
  typeGuid: string;
  reason: string;
}

export interface GptToMbrPlan {
  diskBytes: number;
  diskSignature: number;
  entries: MbrEntryPlan[];
  dropped: DroppedPartition[];
  gpt: GptHeaderInfo;
  /** GPT partition number → new MBR partition number, for fstab or BCD references. */
  renumbered: Map<number, number>;
}

export interface PlanOptions {
  /** GPT partition number to mark active (the one whose boot sector the BIOS MBR code chains to). */
  activeGptIndex?: number;
  /** Overrides the MBR disk signature (default: from the GPT disk GUID). */
  diskSignature?: number;
}

/** Size of a disk image file, or of a block device (an attached disk), in bytes. */
export async function diskSize(imagePath: string): Promise<number> {
  const st = await fsp.stat(imagePath);
  if (!st.isBlockDevice()) return st.size;
  return Number((await run('blockdev', ['--getsize64', imagePath])).stdout.trim());
}

function refuse(imagePath: string, why: string): never {
  throw new RestoreError(FailureType.GuestPreparation, `${imagePath}: cannot convert GPT to MBR for BIOS boot: ${why}`);
}

/** Reads the fields of the primary GPT header the conversion needs to wipe both copies. */
export async function readGptHeader(imagePath: string): Promise<GptHeaderInfo> {
  const fh = await fsp.open(imagePath, 'r');
  try {
    const hdr = Buffer.alloc(SECTOR);
    await fh.read(hdr, 0, SECTOR, SECTOR);
    if (hdr.toString('latin1', 0, 8) !== 'EFI PART') refuse(imagePath, 'no GPT header at LBA 1 (512-byte sectors)');
    const num = (off: number) => Number(hdr.readBigUInt64LE(off));
    const count = hdr.readUInt32LE(80);
    const entrySize = hdr.readUInt32LE(84);
    const entriesSectors = Math.ceil((count * entrySize) / SECTOR);
    const backupHeaderLba = num(32);
    const bak = Buffer.alloc(SECTOR);
    await fh.read(bak, 0, SECTOR, backupHeaderLba * SECTOR);
    // A missing backup header (truncated image) leaves the backup entries where they normally are.
    const backupEntriesLba =
      bak.toString('latin1', 0, 8) === 'EFI PART' ? Number(bak.readBigUInt64LE(72)) : backupHeaderLba - entriesSectors;
    return { backupHeaderLba, primaryEntriesLba: num(72), backupEntriesLba, entriesSectors, diskGuidHead: hdr.readUInt32LE(56) };
  } finally {
    await fh.close();
  }
}

function mbrTypeOf(imagePath: string, p: PartitionEntry, fsType: string | null): { code: number; name: string } {
  const fixed = FIXED_TYPES[p.typeCode];
  if (fixed) return fixed;
  if (p.typeCode === GPT.basicData) {
    // "Basic data" holds NTFS, FAT or exFAT on Windows, and sometimes a Linux filesystem.
    if (fsType === 'vfat') return { code: 0x0c, name: 'FAT32 (basic data)' };
    if (fsType && /^(ext[234]|xfs|swap)$/.test(fsType)) return { code: 0x83, name: `${fsType} (basic data)` };
    return { code: 0x07, name: 'NTFS (basic data)' };
  }
  return refuse(
    imagePath,
    `partition ${p.index}${p.name ? ` '${p.name}'` : ''} has GPT type ${p.typeCode}, which has no known MBR type; restore as Generation 2 to keep UEFI`,
  );
}

/**
 * Decides the MBR of a GPT disk image, or throws naming what stands in the way. Reads only.
 */
export async function planGptToMbr(imagePath: string, opts: PlanOptions = {}): Promise<GptToMbrPlan> {
  const diskBytes = await diskSize(imagePath);
  const table = await readPartitionTable(imagePath);
  if (table.scheme !== 'gpt') refuse(imagePath, `the disk has an ${table.scheme.toUpperCase()} partition table, not GPT`);
  if (table.sectorSize !== SECTOR)
    refuse(imagePath, `the disk has ${table.sectorSize}-byte sectors; BIOS boot from MBR needs 512-byte sectors`);
  if (diskBytes > MBR_MAX_BYTES) {
    refuse(
      imagePath,
      `the disk is ${diskBytes} bytes, beyond the 2 TiB (${MBR_MAX_BYTES} bytes) an MBR can address; restore as Generation 2 to keep UEFI`,
    );
  }
  const gpt = await readGptHeader(imagePath);

  const dropped: DroppedPartition[] = [];
  const kept: { p: PartitionEntry; code: number; name: string }[] = [];
  for (const p of [...table.partitions].sort((a, b) => a.startBytes - b.startBytes)) {
    const range = { gptIndex: p.index, startLba: p.startBytes / SECTOR, sectors: p.sizeBytes / SECTOR, typeGuid: p.typeCode };
    const always = DROPPED_ALWAYS[p.typeCode];
    if (always) {
      dropped.push({ ...range, reason: always });
      continue;
    }
    const fs = await probeFilesystem(imagePath, p.startBytes);
    kept.push({ p, ...mbrTypeOf(imagePath, p, fs?.type ?? null) });
  }
  if (kept.length > 4) {
    const esp = kept.findIndex((k) => k.p.typeCode === GPT.efi);
    if (esp >= 0) {
      const [e] = kept.splice(esp, 1);
      dropped.push({
        gptIndex: e!.p.index,
        startLba: e!.p.startBytes / SECTOR,
        sectors: e!.p.sizeBytes / SECTOR,
        typeGuid: e!.p.typeCode,
        reason: 'EFI system partition: not needed for BIOS boot and no fifth MBR entry is available; its sectors are left unchanged',
      });
    }
  }
  if (kept.length > 4) {
    const list = kept.map((k) => `${k.p.index} (${k.name})`).join(', ');
    refuse(
      imagePath,
      `${kept.length} partitions must stay (${list}) but an MBR holds four primary partitions; restore as Generation 2 to keep UEFI`,
    );
  }
  if (kept.length === 0) refuse(imagePath, 'no partition would remain');
  if (opts.activeGptIndex !== undefined && !kept.some((k) => k.p.index === opts.activeGptIndex)) {
    refuse(imagePath, `partition ${opts.activeGptIndex}, to be marked active, is not among the partitions kept`);
  }
  for (const k of kept) {
    if (k.p.startBytes / SECTOR + k.p.sizeBytes / SECTOR > MBR_MAX_SECTORS) {
      refuse(imagePath, `partition ${k.p.index} ends beyond sector 2^32, which an MBR cannot address`);
    }
  }
  const entries = kept.map((k, i) => ({
    mbrIndex: i + 1,
    gptIndex: k.p.index,
    startLba: k.p.startBytes / SECTOR,
    sectors: k.p.sizeBytes / SECTOR,
    typeCode: k.code,
    bootable: k.p.index === opts.activeGptIndex,
    label: k.name,
  }));
  const signature = (opts.diskSignature ?? gpt.diskGuidHead) >>> 0;
  return {
    diskBytes,
    diskSignature: signature === 0 ? 0x56524d31 : signature,
    entries,
    dropped,
    gpt,
    renumbered: new Map(entries.map((e) => [e.gptIndex, e.mbrIndex])),
  };
}

/** `count` sectors from `lba` of a disk image (zeros past its end). */
export async function readSectors(imagePath: string, lba: number, count = 1): Promise<Buffer> {
  const fh = await fsp.open(imagePath, 'r');
  try {
    const b = Buffer.alloc(count * SECTOR);
    await fh.read(b, 0, b.length, lba * SECTOR);
    return b;
  } finally {
    await fh.close();
  }
}

/** CHS of an LBA with the conventional 255 heads × 63 sectors; beyond cylinder 1023 the maximum. */
function chs(lba: number): [number, number, number] {
  const c = Math.floor(lba / (255 * 63));
  if (c > 1023) return [0xfe, 0xff, 0xff];
  const h = Math.floor(lba / 63) % 255;
  const s = (lba % 63) + 1;
  return [h, ((c >> 2) & 0xc0) | s, c & 0xff];
}

/** The 64 bytes of the four partition entries plus the 0x55AA signature (offsets 446..511). */
export function mbrTableBytes(entries: MbrEntryPlan[]): Buffer {
  const out = Buffer.alloc(66);
  for (const e of entries) {
    const at = (e.mbrIndex - 1) * 16;
    out[at] = e.bootable ? 0x80 : 0x00;
    Buffer.from(chs(e.startLba)).copy(out, at + 1);
    out[at + 4] = e.typeCode;
    Buffer.from(chs(e.startLba + e.sectors - 1)).copy(out, at + 5);
    out.writeUInt32LE(e.startLba, at + 8);
    out.writeUInt32LE(e.sectors, at + 12);
  }
  out.writeUInt16LE(0xaa55, 64);
  return out;
}

function describeEntry(e: MbrEntryPlan): string {
  const type = e.typeCode.toString(16).padStart(2, '0');
  return `${e.mbrIndex}: type 0x${type} ${e.label}, sectors ${e.startLba}+${e.sectors}${e.bootable ? ', active' : ''} (was GPT ${e.gptIndex})`;
}

/**
 * Writes the planned MBR (sector 0: boot code, disk signature, table) and zeroes both GPT headers and
 * entry arrays, so no tool or firmware sees a stale GPT. `bootCode` (at most 440 bytes) replaces the
 * code area; the caller's boot loader may patch sector 0 afterwards.
 */
export async function writeMbr(imagePath: string, plan: GptToMbrPlan, bootCode: Buffer, codeName: string): Promise<BootChange[]> {
  if (bootCode.length > 440)
    throw new RestoreError(FailureType.GuestPreparation, `MBR boot code ${codeName} is ${bootCode.length} bytes; at most 440 fit`);
  const { gpt } = plan;
  const lastLba = Math.floor(plan.diskBytes / SECTOR) - 1;
  const ranges: [number, number, string][] = [
    [1, gpt.primaryEntriesLba + gpt.entriesSectors - 1, 'primary GPT header and entries'],
    [gpt.backupEntriesLba, Math.min(gpt.backupHeaderLba, lastLba), 'backup GPT entries and header'],
  ];
  for (const [first, last, what] of ranges) {
    for (const e of plan.entries) {
      if (first < e.startLba + e.sectors && e.startLba <= last) {
        throw new RestoreError(
          FailureType.GuestPreparation,
          `${imagePath}: the ${what} (sectors ${first}-${last}) overlap partition ${e.gptIndex}`,
        );
      }
    }
  }
  const fh = await fsp.open(imagePath, 'r+');
  const changes: BootChange[] = [];
  try {
    const before = Buffer.alloc(SECTOR);
    await fh.read(before, 0, SECTOR, 0);
    const after = Buffer.alloc(SECTOR);
    bootCode.copy(after, 0);
    after.writeUInt32LE(plan.diskSignature, 440);
    mbrTableBytes(plan.entries).copy(after, 446);
    await fh.write(after, 0, SECTOR, 0);
    changes.push(
      sectorChange(0, 0, 'MBR', `GPT replaced by an MBR partition table for BIOS boot, with ${codeName}`, before, after, [
        `- protective MBR (GPT)`,
        ...plan.entries.map((e) => `+ ${describeEntry(e)}`),
        `+ disk signature 0x${plan.diskSignature.toString(16).padStart(8, '0')}`,
      ]),
    );
    for (const [first, last, what] of ranges) {
      if (last < first) continue;
      const len = (last - first + 1) * SECTOR;
      const old = Buffer.alloc(len);
      await fh.read(old, 0, len, first * SECTOR);
      const zero = Buffer.alloc(len);
      await fh.write(zero, 0, len, first * SECTOR);
      changes.push(sectorChange(first, last, what, `${what} zeroed: the disk is MBR-partitioned now`, old, zero, [`- ${what}`]));
    }
    for (const d of plan.dropped) {
      changes.push({
        path: `GPT partition ${d.gptIndex} (sectors ${d.startLba}+${d.sectors})`,
        action: 'remove',
        description: `Not carried into the MBR: ${d.reason}`,
        sha256Before: null,
        sha256After: null,
        diff: [`- GPT partition ${d.gptIndex} type ${d.typeGuid}`],
      });
    }
  } finally {
    await fh.close();
  }
  return changes;
}
