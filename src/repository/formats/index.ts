import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { ImageFile, SECTOR, imageError, type DiskImage, type DiskImageFormat, type Extent, type MappedImage } from './image';
import { openQcow2 } from './qcow2';
import { openRaw } from './raw';
import { ByteReader } from './stream';
import { isVhdFooter, openVhd } from './vhd';
import { openVhdx } from './vhdx';
import { VMDK_MAGIC, openVmdkDescriptor, openVmdkSparse, openVmdkStreamFile, parseSparseHeader, readVmdkStream } from './vmdk';

export { DISK_IMAGE_FORMATS, type DiskImage, type DiskImageFormat, type Extent } from './image';
export { ByteReader } from './stream';

/** Backing files deeper than this are refused (a chain, or a loop the realpath check did not catch). */
const MAX_BACKING_DEPTH = 16;

const QCOW2_MAGIC = 0x514649fb;

type Detected = DiskImageFormat | 'vmdk-descriptor';

/** What the first and last bytes of an image say it is. */
async function detect(file: ImageFile): Promise<Detected> {
  const head = await file.readAt(0, Math.min(file.size, SECTOR), 'raw', 'header');
  if (head.length >= 8 && head.toString('latin1', 0, 8) === 'vhdxfile') return 'vhdx';
  if (head.length >= 4 && head.readUInt32BE(0) === QCOW2_MAGIC) return 'qcow2';
  if (head.length >= 4 && head.readUInt32LE(0) === VMDK_MAGIC) return 'vmdk';
  if (isVhdFooter(head)) return 'vhd';
  if (/^\s*# Disk DescriptorFile/.test(head.toString('latin1'))) return 'vmdk-descriptor';
  if (file.size >= SECTOR && isVhdFooter(await file.readAt(file.size - SECTOR, SECTOR, 'raw', 'footer'))) return 'vhd';
  return 'raw';
}

/** The format of an image file, from its first and last bytes only. */
export async function detectDiskImageFormat(file: string): Promise<DiskImageFormat> {
  const image = await ImageFile.open(file);
  try {
    const detected = await detect(image);
    return detected === 'vmdk-descriptor' ? 'vmdk' : detected;
  } finally {
    await image.close();
  }
}

export interface OpenOptions {
  /** The format the caller expects (vm.json's `format`); a different detected format is an error. */
  expectedFormat?: DiskImageFormat;
}

/** Opens a disk image of any supported format, detected from the file itself. */
export async function openDiskImage(file: string, opts: OpenOptions = {}): Promise<DiskImage> {
  return openDetected(path.resolve(file), opts.expectedFormat, []);
}

async function openDetected(file: string, expected: DiskImageFormat | undefined, chain: string[]): Promise<DiskImage> {
  const real = await fs.realpath(file).catch(() => file);
  if (chain.includes(real))
    throw imageError(chain[chain.length - 1], 'qcow2', 'backing file', `${file} is already in the backing chain (a loop)`);
  if (chain.length > MAX_BACKING_DEPTH) throw imageError(file, 'qcow2', 'backing file', `chain is deeper than ${MAX_BACKING_DEPTH}`);
  const image = await ImageFile.open(file).catch((err: unknown) => {
    if (err instanceof RestoreError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    throw new RestoreError(
      FailureType.InvalidRequest,
      `disk image ${file} cannot be opened: ${code === 'ENOENT' ? 'not found' : (err as Error).message}`,
    );
  });
  try {
    const detected = await detect(image);
    const format: DiskImageFormat = detected === 'vmdk-descriptor' ? 'vmdk' : detected;
    if (expected && expected !== format) {
      throw new RestoreError(FailureType.InvalidRequest, `disk image ${file}: format is given as '${expected}' but the file is ${format}`);
    }
    const openBacking = async (backing: string): Promise<MappedImage> => {
      const opened = await openDetected(backing, undefined, [...chain, real]);
      if (!('map' in opened)) {
        await opened.close();
        throw imageError(file, 'qcow2', 'backing file', `${backing} is a ${opened.subformat} image, which cannot be a backing file`);
      }
      return opened as MappedImage;
    };
    switch (detected) {
      case 'raw':
        return openRaw(image);
      case 'qcow2':
        return await openQcow2(image, openBacking);
      case 'vhd':
        return await openVhd(image);
      case 'vhdx':
        return await openVhdx(image);
      case 'vmdk-descriptor':
        return await openVmdkDescriptor(image);
      case 'vmdk': {
        const header = parseSparseHeader(await image.readAt(0, Math.min(image.size, SECTOR), 'vmdk', 'header'), file);
        return header.compressed ? openVmdkStreamFile(image, header) : await openVmdkSparse(image, header);
      }
    }
  } catch (err) {
    await image.close().catch(() => undefined);
    throw err;
  }
}

/** Format and virtual size of an image, for checking a vm.json before anything is imported. */
export async function probeDiskImage(
  file: string,
  opts: OpenOptions = {},
): Promise<{ format: DiskImageFormat; subformat: string; capacityBytes: number }> {
  const image = await openDiskImage(file, opts);
  await image.close();
  return { format: image.format, subformat: image.subformat, capacityBytes: image.capacityBytes };
}

/**
 * A disk image read in one pass from a stream (a member of an OVA): streamOptimized VMDK, or raw. Formats
 * that need random access are refused with the advice to extract the archive.
 */
export async function openDiskImageStream(reader: ByteReader, label: string, size: number): Promise<DiskImage> {
  const head = await reader.readExact(Math.min(SECTOR, size));
  if (!head) throw imageError(label, 'raw', 'header', 'is truncated');
  const needsRandomAccess = (format: string): RestoreError =>
    new RestoreError(
      FailureType.InvalidRequest,
      `disk image ${label} is ${format}, which cannot be read from a stream; extract the OVA and import its .ovf instead`,
    );
  let used = false;
  const once = (): void => {
    if (used) throw new RestoreError(FailureType.InvalidRequest, `disk image ${label} is a stream and can be read only once`);
    used = true;
  };
  if (head.length >= 4 && head.readUInt32LE(0) === VMDK_MAGIC) {
    const header = parseSparseHeader(head, label);
    if (!header.compressed) throw needsRandomAccess('a monolithicSparse VMDK');
    return {
      path: label,
      format: 'vmdk',
      subformat: 'streamOptimized',
      capacityBytes: header.capacityBytes,
      extents: (from = 0, to = header.capacityBytes, opts) => {
        once();
        return readVmdkStream(reader, label, header, from, to, opts);
      },
      close: async () => undefined,
    };
  }
  if (head.length >= 4 && head.readUInt32BE(0) === QCOW2_MAGIC) throw needsRandomAccess('qcow2');
  if (head.length >= 8 && head.toString('latin1', 0, 8) === 'vhdxfile') throw needsRandomAccess('VHDX');
  if (isVhdFooter(head)) throw needsRandomAccess('a dynamic VHD');
  if (size % SECTOR !== 0) throw imageError(label, 'raw', 'size', `${size} bytes is not a multiple of ${SECTOR}`);
  return {
    path: label,
    format: 'raw',
    subformat: 'raw',
    capacityBytes: size,
    extents: (from = 0, to = size) => {
      once();
      return (async function* (): AsyncGenerator<Extent, void, undefined> {
        if (from !== 0 || to !== size)
          throw new RestoreError(FailureType.InvalidRequest, `disk image ${label} is a stream and is read whole`);
        let offset = 0;
        let pending: Buffer | null = head;
        while (offset < size) {
          const data: Buffer | null = pending ?? (await reader.readSome(Math.min(16 * 1024 * 1024, size - offset)));
          pending = null;
          if (!data) throw imageError(label, 'raw', 'data', `ends at ${offset} of ${size} bytes (truncated)`);
          yield { offset, length: data.length, data };
          offset += data.length;
        }
      })();
    },
    close: async () => undefined,
  };
}
