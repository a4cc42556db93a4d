import { ImageFile, SECTOR, imageError, mappedImage, type DiskImage } from './image';

/** A raw image: the file is the disk. Its size must be a whole number of sectors. */
export function openRaw(file: ImageFile): DiskImage {
  if (file.size === 0) throw imageError(file.path, 'raw', 'file size', 'is 0: the image is empty');
  if (file.size % SECTOR !== 0) throw imageError(file.path, 'raw', 'file size', `${file.size} bytes is not a multiple of ${SECTOR}`);
  return mappedImage({
    path: file.path,
    format: 'raw',
    subformat: 'raw',
    capacityBytes: file.size,

    map: async function* (from, to) {
      yield { kind: 'data', offset: from, length: to - from, file, fileOffset: from, field: 'data' };
    },
    close: () => file.close(),
  });
}
