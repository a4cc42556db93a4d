import { MiB } from '../../domain/units';
/** Fixed-VHD footer parsing and the checks Azure applies before importing a page blob as a disk. */

export const VHD_FOOTER_SIZE = 512;
/** Largest importable disk: 32 TiB of data plus the footer. */
export const MAX_VHD_VIRTUAL_SIZE = 32 * 1024 * 1024 * MiB;

export const VhdDiskType = { Fixed: 2, Dynamic: 3, Differencing: 4 } as const;

export interface VhdFooter {
  cookie: string;
  features: number;
  formatVersion: number;
  dataOffset: bigint;
  timestamp: number;
  creatorApplication: string;
  creatorVersion: number;
  creatorHostOs: string;
  originalSize: bigint;
  currentSize: bigint;
  geometry: { cylinders: number; heads: number; sectorsPerTrack: number };
  diskType: number;
  checksum: number;
  /** One's complement of the byte sum of the footer with the checksum field taken as zero. */
  computedChecksum: number;
  uniqueId: string;
  savedState: number;
}

export function parseVhdFooter(buf: Buffer): VhdFooter {
  if (buf.length !== VHD_FOOTER_SIZE) throw new Error(`a VHD footer is ${VHD_FOOTER_SIZE} bytes, got ${buf.length}`);
  let sum = 0;
  for (let i = 0; i < VHD_FOOTER_SIZE; i++) if (i < 64 || i >= 68) sum += buf[i];
  const hex = buf.subarray(68, 84).toString('hex');
  return {
    cookie: buf.subarray(0, 8).toString('latin1'),
    features: buf.readUInt32BE(8),
    formatVersion: buf.readUInt32BE(12),
    dataOffset: buf.readBigUInt64BE(16),
    timestamp: buf.readUInt32BE(24),
    creatorApplication: buf.subarray(28, 32).toString('latin1'),
    creatorVersion: buf.readUInt32BE(32),
    creatorHostOs: buf.subarray(36, 40).toString('latin1'),
    originalSize: buf.readBigUInt64BE(40),
    currentSize: buf.readBigUInt64BE(48),
    geometry: { cylinders: buf.readUInt16BE(56), heads: buf.readUInt8(58), sectorsPerTrack: buf.readUInt8(59) },
    diskType: buf.readUInt32BE(60),
    checksum: buf.readUInt32BE(64),
    computedChecksum: ~sum >>> 0,
    uniqueId: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
    savedState: buf.readUInt8(84),
  };
}

export type VhdProblem =
  | { kind: 'size'; virtualSize: number }
  | { kind: 'tooLarge'; virtualSize: number }
  | { kind: 'cookie'; cookie: string }
  | { kind: 'checksum'; expected: number; actual: number }
  | { kind: 'diskType'; diskType: number }
  | { kind: 'currentSize'; currentSize: bigint; virtualSize: number };

/** Size rule only: Azure wants a whole number of MiB of data followed by the 512-byte footer. */
export function checkVhdBlobSize(blobSize: number): VhdProblem | undefined {
  const virtualSize = blobSize - VHD_FOOTER_SIZE;
  if (virtualSize <= 0 || virtualSize % MiB !== 0) return { kind: 'size', virtualSize };
  if (virtualSize > MAX_VHD_VIRTUAL_SIZE) return { kind: 'tooLarge', virtualSize };
  return undefined;
}

export function checkVhdFooter(blobSize: number, footer: VhdFooter): VhdProblem | undefined {
  if (footer.cookie !== 'conectix') return { kind: 'cookie', cookie: footer.cookie };
  if (footer.checksum !== footer.computedChecksum) {
    return { kind: 'checksum', expected: footer.computedChecksum, actual: footer.checksum };
  }
  if (footer.diskType !== VhdDiskType.Fixed) return { kind: 'diskType', diskType: footer.diskType };
  const virtualSize = blobSize - VHD_FOOTER_SIZE;
  if (footer.currentSize !== BigInt(virtualSize)) {
    return { kind: 'currentSize', currentSize: footer.currentSize, virtualSize };
  }
  return undefined;
}
