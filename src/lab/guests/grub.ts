/**
 * GRUB for the lab's Debian guests, put in place without grub-install (which wants a block device): the
 * core image built by grub-mkimage, written after the MBR (BIOS) or into a FAT32 ESP built in place (UEFI),
 * and the modules copied into the guest's /boot/grub. Part of the guest recipe hash (see build.ts).
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../../guest/exec';
import { GRUB_CORE_MODULES, grubEarlyConfig, type GuestFirmware } from './recipes';
import { MiB } from '../../domain/units';

const SECTOR = 512;
/** Partitions start at 1 MiB: the gap after the MBR holds GRUB's core image on BIOS disks. */
export const FIRST_PARTITION = MiB;
export const GRUB_DIR = '/usr/lib/grub';

async function writeAt(image: string, offset: number, data: Buffer): Promise<void> {
  const fh = await fsp.open(image, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
  } finally {
    await fh.close();
  }
}

export const GRUB_PLATFORM: Record<GuestFirmware, string> = { bios: 'i386-pc', efi: 'x86_64-efi' };

/** A GRUB core image with the early config that finds the root filesystem by UUID and loads its grub.cfg. */
export async function grubCoreImage(firmware: GuestFirmware, rootFsUuid: string, work: string): Promise<string> {
  const platform = GRUB_PLATFORM[firmware];
  const early = path.join(work, 'early.cfg');
  const out = path.join(work, firmware === 'bios' ? 'core.img' : 'BOOTX64.EFI');
  await fsp.writeFile(early, grubEarlyConfig(rootFsUuid));
  const modules = GRUB_CORE_MODULES[firmware];
  await run('grub-mkimage', ['-O', platform, '-d', path.join(GRUB_DIR, platform), '-c', early, '-p', '/boot/grub', '-o', out, ...modules]);
  return out;
}

/**
 * GRUB for i386-pc without grub-install (which wants a block device): boot.img's code in the MBR, the
 * core image (diskboot + kernel + modules + an early config) in the sectors after it, up to the first
 * partition. boot.img finds the core at LBA 1 (its default), and diskboot's block list is filled in by
 * grub-mkimage for a contiguous core.
 */
export async function installGrubBios(image: string, rootFsUuid: string, work: string): Promise<void> {
  const coreBytes = await fsp.readFile(await grubCoreImage('bios', rootFsUuid, work));
  if (coreBytes.length > FIRST_PARTITION - SECTOR) {
    throw new RestoreError(
      FailureType.Configuration,
      `GRUB core image of ${coreBytes.length} bytes does not fit before the first partition`,
    );
  }
  const boot = await fsp.readFile(path.join(GRUB_DIR, 'i386-pc', 'boot.img'));
  // Only the code: bytes 440.. hold the disk signature and the partition table sfdisk wrote.
  await writeAt(image, 0, boot.subarray(0, 440));
  await writeAt(image, SECTOR, coreBytes);
}

/** GRUB for x86_64-efi at the removable-media path of a FAT32 ESP built in place with mkfs.fat and mtools. */
export async function installGrubEfi(
  image: string,
  espOffset: number,
  espBytes: number,
  volumeId: string,
  rootFsUuid: string,
  work: string,
): Promise<void> {
  const efi = await grubCoreImage('efi', rootFsUuid, work);
  // Cluster size and hidden sectors explicit: mkfs.fat would size them for the whole image file otherwise.
  await run('mkfs.fat', [
    '-F',
    '32',
    '-s',
    '1',
    '-n',
    'EFI',
    '-i',
    volumeId,
    '-h',
    String(espOffset / SECTOR),
    '--offset',
    String(espOffset / SECTOR),
    image,
    String(espBytes / 1024),
  ]);
  const target = `${image}@@${espOffset}`;
  const env = { MTOOLS_SKIP_CHECK: '1' };
  await run('mmd', ['-i', target, '::/EFI', '::/EFI/BOOT'], { env });
  await run('mcopy', ['-i', target, efi, '::/EFI/BOOT/BOOTX64.EFI'], { env });
}

export async function copyGrubModules(root: string, firmware: GuestFirmware): Promise<void> {
  const platform = GRUB_PLATFORM[firmware];
  const dest = path.join(root, 'boot/grub', platform);
  await fsp.mkdir(dest, { recursive: true });
  for (const f of await fsp.readdir(path.join(GRUB_DIR, platform))) {
    if (/\.(mod|lst)$/.test(f)) await fsp.copyFile(path.join(GRUB_DIR, platform, f), path.join(dest, f));
  }
}
