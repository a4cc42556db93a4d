import { ImageFile, MAX_TABLE_BYTES, SECTOR, checkCapacity, imageError, mappedImage, u64, type MappedImage, type Piece } from './image';

const F = 'vhd';
const FOOTER_COOKIE = 'conectix';
const DYNAMIC_COOKIE = 'cxsparse';
const TYPE_FIXED = 2;
const TYPE_DYNAMIC = 3;
const TYPE_DIFFERENCING = 4;
const UNALLOCATED = 0xffffffff;
const MIN_BLOCK = 4096;
const MAX_BLOCK = 256 * 1024 * 1024;

export const isVhdFooter = (buf: Buffer): boolean => buf.length >= 8 && buf.toString('latin1', 0, 8) === FOOTER_COOKIE;

/** One's complement of the byte sum, with the checksum field itself counted as zeros. */
function vhdChecksum(buf: Buffer, checksumAt: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) if (i < checksumAt || i >= checksumAt + 4) sum += buf[i];
  return ~sum >>> 0;
}

/**
 * VHD fixed (data then a 512-byte footer) and dynamic (footer copy, dynamic header, block allocation table,
 * blocks of a sector bitmap plus data; unallocated blocks are holes). Differencing disks are refused. The
 * virtual size is the footer's current size, as Hyper-V and Azure use it.
 */
export async function openVhd(file: ImageFile): Promise<MappedImage> {
  const fail = (field: string, what: string) => imageError(file.path, F, field, what);
  if (file.size < SECTOR) throw fail('footer', `is missing: the file has ${file.size} bytes`);
  const footer = await file.readAt(file.size - SECTOR, SECTOR, F, 'footer');
  if (!isVhdFooter(footer)) throw fail('footer cookie', "is not 'conectix' in the last 512 bytes");
  if (footer.readUInt32BE(64) !== vhdChecksum(footer, 64))
    throw fail('footer checksum', `0x${footer.readUInt32BE(64).toString(16)} does not match the footer`);
  const capacityBytes = checkCapacity(file.path, F, 'footer current size', footer.readBigUInt64BE(48));
  const diskType = footer.readUInt32BE(60);
  if (diskType === TYPE_DIFFERENCING) throw fail('footer disk type', '4 (differencing) needs its parent, which is not supported');

  if (diskType === TYPE_FIXED) {
    if (capacityBytes > file.size - SECTOR) {
      throw fail('footer current size', `${capacityBytes} is more than the ${file.size - SECTOR} data bytes before the footer`);
    }
    return mappedImage({
      path: file.path,
      format: 'vhd',
      subformat: 'fixed',
      capacityBytes,

      map: async function* (from, to) {
        yield { kind: 'data', offset: from, length: to - from, file, fileOffset: from, field: 'data' };
      },
      close: () => file.close(),
    });
  }
  if (diskType !== TYPE_DYNAMIC) throw fail('footer disk type', `${diskType} is not fixed (2) or dynamic (3)`);

  const headerOffset = u64(footer.readBigUInt64BE(16), file.path, F, 'footer data offset');
  const header = await file.readAt(headerOffset, 1024, F, 'footer data offset');
  if (header.toString('latin1', 0, 8) !== DYNAMIC_COOKIE) throw fail('dynamic header cookie', "is not 'cxsparse'");
  if (header.readUInt32BE(36) !== vhdChecksum(header, 36)) throw fail('dynamic header checksum', 'does not match the header');
  const batOffset = u64(header.readBigUInt64BE(16), file.path, F, 'dynamic header table offset');
  const maxEntries = header.readUInt32BE(28);
  const blockSize = header.readUInt32BE(32);
  if (blockSize < MIN_BLOCK || blockSize > MAX_BLOCK || (blockSize & (blockSize - 1)) !== 0) {
    throw fail('dynamic header block size', `${blockSize} is out of range (a power of two from ${MIN_BLOCK} to ${MAX_BLOCK})`);
  }
  const blocks = Math.ceil(capacityBytes / blockSize);
  if (maxEntries < blocks) throw fail('dynamic header max table entries', `${maxEntries} is fewer than the ${blocks} blocks of the disk`);
  if (blocks * 4 > MAX_TABLE_BYTES) throw fail('dynamic header max table entries', `${blocks} is too many`);
  const bat = await file.readAt(batOffset, blocks * 4, F, 'dynamic header table offset');
  const bitmapBytes = Math.ceil(blockSize / SECTOR / 8 / SECTOR) * SECTOR;
  const batEnd = batOffset + maxEntries * 4;
  const dataEnd = file.size - SECTOR;
  const seen = new Map<number, number>();
  for (let i = 0; i < blocks; i++) {
    const sector = bat.readUInt32BE(i * 4);
    if (sector === UNALLOCATED) continue;
    const field = `BAT entry ${i}`;
    const start = sector * SECTOR;
    const length = Math.min(blockSize, capacityBytes - i * blockSize);
    if (start + bitmapBytes + length > dataEnd) throw fail(field, `block at ${start} is past the end of the data (${dataEnd} bytes)`);
    if (start < headerOffset + 1024 || (start < batEnd && batOffset < start + bitmapBytes + blockSize)) {
      throw fail(field, `block at ${start} overlaps the headers or the BAT (a loop in the tables)`);
    }
    if (seen.has(start)) throw fail(field, `block at ${start} is also used by BAT entry ${seen.get(start)} (a loop in the tables)`);
    seen.set(start, i);
  }

  async function* map(from: number, to: number): AsyncGenerator<Piece, void, undefined> {
    for (let at = from; at < to; ) {
      const block = Math.floor(at / blockSize);
      const end = Math.min(to, (block + 1) * blockSize);
      const sector = bat.readUInt32BE(block * 4);
      if (sector === UNALLOCATED) yield { kind: 'zero', offset: at, length: end - at };
      else {
        // The sector bitmap matters only for differencing disks; a dynamic disk's block reads as stored.
        const fileOffset = sector * SECTOR + bitmapBytes + (at - block * blockSize);
        yield { kind: 'data', offset: at, length: end - at, file, fileOffset, field: `BAT entry ${block}` };
      }
      at = end;
    }
  }
  return mappedImage({ path: file.path, format: 'vhd', subformat: 'dynamic', capacityBytes, map, close: () => file.close() });
}
