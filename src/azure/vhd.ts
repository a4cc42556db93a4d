/**
 * Fixed VHD footer and Azure disk size limits.
 *
 * A fixed VHD is the raw disk image followed by a 512-byte footer. Azure accepts only fixed VHDs
 * whose total size is N MiB + 512, so the virtual size is the source capacity rounded up to 1 MiB.
 * Layout and CHS algorithm: Microsoft "Virtual Hard Disk Image Format Specification" (2006),
 * also implemented by QEMU block/vpc.c and Microsoft/azure-vhd-utils vhdcore/footer.
 */
import { createHash } from 'node:crypto';
import { FailureType, RestoreError } from '../domain/errors';

export const SECTOR_SIZE = 512;
export const VHD_FOOTER_SIZE = 512;
import { GiB, MiB, TiB } from '../domain/units';

/**
 * Azure limits that bind a restore, from Microsoft documentation as of 2025 (not fetched live here):
 * - Put Page: at most 4 MiB per call, 512-byte aligned ranges
 *   (learn.microsoft.com/rest/api/storageservices/put-page).
 * - Page blob: at most 8 TiB (learn.microsoft.com/rest/api/storageservices/
 *   understanding-block-blobs--append-blobs--and-page-blobs).
 * - Managed disk direct upload: CreationData.uploadSizeBytes from 20 MiB + 512 to 32 TiB + 512
 *   (learn.microsoft.com/azure/virtual-machines/linux/disks-upload-vhd-to-managed-disk-cli and the
 *   Compute REST model for CreationData).
 * - OS disk: a managed OS disk can be at most 4,095 GiB (managed-disks-overview, "OS disk"); a
 *   Generation 1 VM boots from MBR, which addresses only 2 TiB, so Gen1 OS disks over 2 TiB are
 *   refused (learn.microsoft.com/azure/virtual-machines/generation-2, "OS disk > 2 TB").
 */
export const AZURE_LIMITS = {
  putPageMaxBytes: 4 * MiB,
  pageBlobMaxBytes: 8 * TiB,
  managedDiskUploadMinBytes: 20 * MiB + VHD_FOOTER_SIZE,
  managedDiskUploadMaxBytes: 32 * TiB + VHD_FOOTER_SIZE,
  osDiskMaxBytesGen2: 4095 * GiB,
  osDiskMaxBytesGen1: 2 * TiB,
} as const;

/** Creator application written into our footers; 'vmrs' identifies vmrestore-made VHDs. */
export const VHD_CREATOR_APP = 'vmrs';
/** vmrestore 0.1 as major.minor in the high and low 16 bits, as the spec lays out the field. */
export const VHD_CREATOR_VERSION = 0x00000001;
export const VHD_CREATOR_HOST_OS = 'Wi2k';
export const VHD_DISK_TYPE_FIXED = 2;
const VHD_COOKIE = 'conectix';
const VHD_FEATURES_RESERVED = 0x00000002;
const VHD_FORMAT_VERSION = 0x00010000;
/** The VHD epoch: timestamps count seconds since 2000-01-01T00:00:00Z. */
const VHD_EPOCH_MS = Date.UTC(2000, 0, 1);

function formatBytes(n: number): string {
  const units: [number, string][] = [
    [TiB, 'TiB'],
    [GiB, 'GiB'],
    [MiB, 'MiB'],
  ];
  for (const [size, unit] of units) {
    if (n >= size && n % size === 0) return `${n} bytes (${n / size} ${unit})`;
    if (n > size && (n - VHD_FOOTER_SIZE) % size === 0) return `${n} bytes (${(n - VHD_FOOTER_SIZE) / size} ${unit} + 512)`;
  }
  for (const [size, unit] of units) {
    if (n >= size) return `${n} bytes (${(n / size).toFixed(2)} ${unit})`;
  }
  return `${n} bytes`;
}

function assertByteCount(name: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new RestoreError(FailureType.InvalidRequest, `${name} must be a non-negative integer, got ${n}`);
  }
}

/** The VHD virtual size for a disk: its capacity rounded up to a whole MiB, as Azure requires. */
export function vhdVirtualSize(capacityBytes: number): number {
  assertByteCount('capacityBytes', capacityBytes);
  return Math.ceil(capacityBytes / MiB) * MiB;
}

/** Size of the blob holding the fixed VHD: virtual size plus the footer. */
export function vhdBlobSize(capacityBytes: number): number {
  return vhdVirtualSize(capacityBytes) + VHD_FOOTER_SIZE;
}

export interface ChsGeometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** CHS geometry for a virtual size, following the algorithm in the VHD specification appendix. */
export function vhdGeometry(currentSize: number): ChsGeometry {
  let totalSectors = Math.floor(currentSize / SECTOR_SIZE);
  const maxSectors = 65535 * 16 * 255;
  if (totalSectors > maxSectors) totalSectors = maxSectors;
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (totalSectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    heads = Math.floor((cylinderTimesHeads + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylinderTimesHeads / heads), heads, sectorsPerTrack };
}

export interface BuildFooterOptions {
  /** Virtual size in bytes; Azure needs a whole number of MiB (see vhdVirtualSize). */
  currentSize: number;
  /** 16-byte disk UUID; use uuidFromRestoreId so a retry writes identical bytes. */
  uuid: Buffer;
  /** Defaults to now; pass a fixed time when retries must produce byte-identical footers. */
  timestamp?: Date;
}

function footerChecksum(footer: Buffer): number {
  let sum = 0;
  for (let i = 0; i < VHD_FOOTER_SIZE; i++) {
    if (i >= 64 && i < 68) continue;
    sum += footer[i];
  }
  return ~sum >>> 0;
}

/** Builds the 512-byte footer of a fixed VHD. */
export function buildFixedVhdFooter(opts: BuildFooterOptions): Buffer {
  const { currentSize, uuid } = opts;
  assertByteCount('currentSize', currentSize);
  if (currentSize % SECTOR_SIZE !== 0) {
    throw new RestoreError(FailureType.InvalidRequest, `VHD current size ${currentSize} is not a multiple of ${SECTOR_SIZE}`);
  }
  if (!Buffer.isBuffer(uuid) || uuid.length !== 16) {
    throw new RestoreError(FailureType.InvalidRequest, 'VHD uuid must be a 16-byte Buffer');
  }
  const when = opts.timestamp ?? new Date();
  const seconds = Math.floor((when.getTime() - VHD_EPOCH_MS) / 1000);
  if (!Number.isFinite(seconds) || seconds < 0 || seconds > 0xffffffff) {
    throw new RestoreError(FailureType.InvalidRequest, `VHD timestamp ${when.toISOString()} is outside 2000-01-01..2136`);
  }
  const f = Buffer.alloc(VHD_FOOTER_SIZE);
  f.write(VHD_COOKIE, 0, 'ascii');
  f.writeUInt32BE(VHD_FEATURES_RESERVED, 8);
  f.writeUInt32BE(VHD_FORMAT_VERSION, 12);
  // Fixed disks have no dynamic header; MS tools expect all 64 bits set, not just the low 32.
  f.writeBigUInt64BE(0xffffffffffffffffn, 16);
  f.writeUInt32BE(seconds, 24);
  f.write(VHD_CREATOR_APP, 28, 'ascii');
  f.writeUInt32BE(VHD_CREATOR_VERSION, 32);
  f.write(VHD_CREATOR_HOST_OS, 36, 'ascii');
  f.writeBigUInt64BE(BigInt(currentSize), 40);
  f.writeBigUInt64BE(BigInt(currentSize), 48);
  const g = vhdGeometry(currentSize);
  f.writeUInt16BE(g.cylinders, 56);
  f.writeUInt8(g.heads, 58);
  f.writeUInt8(g.sectorsPerTrack, 59);
  f.writeUInt32BE(VHD_DISK_TYPE_FIXED, 60);
  uuid.copy(f, 68);
  f.writeUInt8(0, 84);
  f.writeUInt32BE(footerChecksum(f), 64);
  return f;
}

export interface VhdFooter {
  cookie: string;
  features: number;
  fileFormatVersion: number;
  dataOffset: bigint;
  timestamp: Date;
  creatorApp: string;
  creatorVersion: number;
  creatorHostOs: string;
  originalSize: number;
  currentSize: number;
  geometry: ChsGeometry;
  diskType: number;
  checksum: number;
  /** Checksum recomputed over the bytes as read. */
  computedChecksum: number;
  checksumValid: boolean;
  uuid: Buffer;
  savedState: number;
}

/**
 * Parses a VHD footer. Given more than 512 bytes, the footer is taken from the end (the tail of a
 * fixed VHD). Never throws on bad content: callers inspect cookie, checksumValid and diskType.
 */
export function parseVhdFooter(buf: Buffer): VhdFooter {
  if (buf.length < VHD_FOOTER_SIZE) {
    throw new RestoreError(FailureType.InvalidRequest, `a VHD footer is ${VHD_FOOTER_SIZE} bytes, got ${buf.length}`);
  }
  const f = buf.subarray(buf.length - VHD_FOOTER_SIZE);
  const checksum = f.readUInt32BE(64);
  const computedChecksum = footerChecksum(f);
  return {
    cookie: f.toString('latin1', 0, 8),
    features: f.readUInt32BE(8),
    fileFormatVersion: f.readUInt32BE(12),
    dataOffset: f.readBigUInt64BE(16),
    timestamp: new Date(VHD_EPOCH_MS + f.readUInt32BE(24) * 1000),
    creatorApp: f.toString('latin1', 28, 32),
    creatorVersion: f.readUInt32BE(32),
    creatorHostOs: f.toString('latin1', 36, 40),
    originalSize: Number(f.readBigUInt64BE(40)),
    currentSize: Number(f.readBigUInt64BE(48)),
    geometry: {
      cylinders: f.readUInt16BE(56),
      heads: f.readUInt8(58),
      sectorsPerTrack: f.readUInt8(59),
    },
    diskType: f.readUInt32BE(60),
    checksum,
    computedChecksum,
    checksumValid: checksum === computedChecksum,
    uuid: Buffer.from(f.subarray(68, 84)),
    savedState: f.readUInt8(84),
  };
}

/** True when the footer is a well-formed fixed-disk footer of the given virtual size. */
export function footerProblems(footer: VhdFooter, expectedCurrentSize?: number): string[] {
  const problems: string[] = [];
  if (footer.cookie !== VHD_COOKIE) problems.push(`footer cookie is ${JSON.stringify(footer.cookie)}, not "conectix"`);
  if (!footer.checksumValid) {
    problems.push(`footer checksum 0x${footer.checksum.toString(16)} != computed 0x${footer.computedChecksum.toString(16)}`);
  }
  if (footer.diskType !== VHD_DISK_TYPE_FIXED) problems.push(`footer disk type ${footer.diskType} is not fixed (2)`);
  if (footer.fileFormatVersion !== VHD_FORMAT_VERSION) {
    problems.push(`footer format version 0x${footer.fileFormatVersion.toString(16)} != 0x10000`);
  }
  if (expectedCurrentSize !== undefined && footer.currentSize !== expectedCurrentSize) {
    problems.push(`footer current size ${footer.currentSize} != expected ${expectedCurrentSize}`);
  }
  if (footer.currentSize % MiB !== 0) problems.push(`footer current size ${footer.currentSize} is not a whole MiB`);
  return problems;
}

/**
 * Deterministic disk UUID for a restore, so a retried upload writes a byte-identical footer.
 * SHA-256 of the id, shaped as an RFC 4122 version-4 UUID. Pass the disk index when a restore
 * uploads several disks, so they do not share a UUID.
 */
export function uuidFromRestoreId(id: string, diskIndex?: number): Buffer {
  if (typeof id !== 'string' || id.length === 0) {
    throw new RestoreError(FailureType.InvalidRequest, 'restore id must be a non-empty string');
  }
  const key = diskIndex === undefined ? `vmrestore-vhd:${id}` : `vmrestore-vhd:${id}#disk${diskIndex}`;
  const b = createHash('sha256').update(key, 'utf8').digest().subarray(0, 16);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  return Buffer.from(b);
}

/** Formats a 16-byte UUID in the usual 8-4-4-4-12 form. */
export function formatUuid(uuid: Buffer): string {
  const h = uuid.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export type AzureDiskTarget = 'pageBlob' | 'managedDiskUpload';

export interface AzureDiskSizeOptions {
  /** The disk is the VM's OS disk. */
  os: boolean;
  /** VM generation, for the OS disk limit; Azure's default for disks is V1. */
  hyperVGeneration?: 'V1' | 'V2';
  /** How the VHD reaches Azure: a page blob then Import (default), or managed disk direct upload. */
  target?: AzureDiskTarget;
  /** Named in the error so an operator can tell which disk was refused. */
  diskName?: string;
}

export interface AzureDiskSize {
  virtualSize: number;
  /** Bytes of the uploaded VHD, virtual size plus footer. */
  vhdSize: number;
}

/**
 * Checks a disk against Azure's size limits before anything is uploaded. Throws a non-retryable
 * RestoreError(AzureLimit) naming the disk, its size and the limit it breaks.
 */
export function assertAzureDiskSize(capacityBytes: number, opts: AzureDiskSizeOptions): AzureDiskSize {
  assertByteCount('capacityBytes', capacityBytes);
  const target = opts.target ?? 'pageBlob';
  const generation = opts.hyperVGeneration ?? 'V1';
  const disk = opts.diskName ? `disk '${opts.diskName}'` : 'disk';
  const virtualSize = vhdVirtualSize(capacityBytes);
  const vhdSize = virtualSize + VHD_FOOTER_SIZE;
  const fail = (what: string, limit: number, cmp: string): never => {
    throw new RestoreError(
      FailureType.AzureLimit,
      `${disk} of ${formatBytes(capacityBytes)} (VHD ${formatBytes(vhdSize)}) ${cmp} the ${what} of ${formatBytes(limit)}`,
    );
  };
  if (vhdSize < AZURE_LIMITS.managedDiskUploadMinBytes) {
    fail('Azure minimum upload size', AZURE_LIMITS.managedDiskUploadMinBytes, 'is below');
  }
  if (target === 'pageBlob' && vhdSize > AZURE_LIMITS.pageBlobMaxBytes) {
    fail('Azure page blob maximum', AZURE_LIMITS.pageBlobMaxBytes, 'exceeds');
  }
  if (target === 'managedDiskUpload' && vhdSize > AZURE_LIMITS.managedDiskUploadMaxBytes) {
    fail('Azure managed disk upload maximum', AZURE_LIMITS.managedDiskUploadMaxBytes, 'exceeds');
  }
  if (opts.os) {
    const limit = generation === 'V2' ? AZURE_LIMITS.osDiskMaxBytesGen2 : AZURE_LIMITS.osDiskMaxBytesGen1;
    if (virtualSize > limit) {
      fail(`Azure ${generation === 'V2' ? 'Gen2' : 'Gen1'} OS disk maximum`, limit, 'exceeds');
    }
  }
  return { virtualSize, vhdSize };
}
