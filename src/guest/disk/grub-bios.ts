import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../exec';
import { SECTOR } from './gpt-to-mbr';

/**
 * GRUB for i386-pc (BIOS) written into a disk image without grub-install, which needs a block device:
 * the build host's grub-pc-bin provides boot.img, the modules and grub-mkimage. What grub-install's
 * setup step does to an MBR disk is done here byte by byte:
 *  - boot.img's first 440 bytes become the MBR code, with the LBA of core.img's first sector at 0x5C
 *    and the floppy-drive check at 0x66 replaced by two NOPs (as for any hard disk, so a BIOS that
 *    passes a bogus drive number still boots from 0x80);
 *  - core.img goes into free sectors (normally the gap after the MBR); its first sector (diskboot)
 *    ends with a block list whose first entry (LBA at 500, sector count at 508) tells where the rest
 *    is. grub-mkimage fills in the count; the start is patched to the sector after the first.
 */

export const GRUB_I386_PC_DIR = '/usr/lib/grub/i386-pc';

/** Modules built into core.img: enough to read an ext4 root on an MBR disk through the BIOS and run `normal`. */
export const CORE_MODULES = ['biosdisk', 'part_msdos', 'ext2', 'search_fs_uuid', 'normal'] as const;

const BOOT_KERNEL_SECTOR = 0x5c;
const BOOT_DRIVE_CHECK = 0x66;
const BOOT_CODE_BYTES = 440;
const DISKBOOT_BLOCKLIST_START = SECTOR - 12;
const DISKBOOT_BLOCKLIST_LEN = SECTOR - 4;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function grubError(what: string): never {
  throw new RestoreError(FailureType.GuestPreparation, what);
}

/** boot.img from the build host, checked to be GRUB's i386-pc boot sector. */
export async function readBootImage(grubDir = GRUB_I386_PC_DIR): Promise<Buffer> {
  const file = path.join(grubDir, 'boot.img');
  const img = await fsp
    .readFile(file)
    .catch(() => grubError(`${file} is missing: install Debian's grub-pc-bin on the machine that converts disks`));
  if (img.length !== SECTOR || img.readUInt16LE(510) !== 0xaa55) grubError(`${file} is not a 512-byte GRUB boot sector`);
  return img;
}

/** The 440 bytes of MBR code: boot.img pointing at core.img's first sector. */
export function grubBootCode(bootImg: Buffer, coreLba: number): Buffer {
  const code = Buffer.from(bootImg.subarray(0, BOOT_CODE_BYTES));
  code.writeBigUInt64LE(BigInt(coreLba), BOOT_KERNEL_SECTOR);
  code[BOOT_DRIVE_CHECK] = 0x90;
  code[BOOT_DRIVE_CHECK + 1] = 0x90;
  return code;
}

/** True when sector 0 carries GRUB's boot.img code (everything but the fields setup patches). */
export function isGrubBootCode(sector0: Buffer, bootImg: Buffer): boolean {
  const masked = (b: Buffer) => {
    const c = Buffer.from(b.subarray(0, BOOT_CODE_BYTES));
    c.fill(0, BOOT_KERNEL_SECTOR, BOOT_KERNEL_SECTOR + 8);
    c.fill(0, BOOT_DRIVE_CHECK, BOOT_DRIVE_CHECK + 2);
    return c;
  };
  return masked(sector0).equals(masked(bootImg));
}

/** The core image's LBA as boot code patched by grubBootCode holds it. */
export function bootCodeCoreLba(sector0: Buffer): number {
  return Number(sector0.readBigUInt64LE(BOOT_KERNEL_SECTOR));
}

export interface CoreImageOptions {
  workDir: string;
  /** UUID of the filesystem holding the GRUB directory; searched for at boot. */
  bootFsUuid: string;
  /** MBR partition number of that filesystem: the fallback prefix when the search finds nothing. */
  bootPartition: number;
  /** GRUB directory inside that filesystem: `/boot/grub`, or `/grub` for a separate /boot. */
  grubPath: string;
  grubDir?: string;
}

/** Runs grub-mkimage for i386-pc with an embedded config that finds the GRUB directory by UUID. */
export async function buildCoreImage(opts: CoreImageOptions): Promise<Buffer> {
  if (!UUID_RE.test(opts.bootFsUuid)) grubError(`filesystem UUID '${opts.bootFsUuid}' is not a dashed UUID GRUB can search for`);
  if (!/^(\/[A-Za-z0-9._-]+)+$/.test(opts.grubPath)) grubError(`GRUB directory '${opts.grubPath}' is not a plain absolute path`);
  const early = path.join(opts.workDir, 'grub-early.cfg');
  const out = path.join(opts.workDir, 'core.img');
  await fsp.writeFile(early, `search.fs_uuid ${opts.bootFsUuid} root\nset prefix=($root)${opts.grubPath}\n`);
  await run(
    'grub-mkimage',
    [
      '-O',
      'i386-pc',
      '-d',
      opts.grubDir ?? GRUB_I386_PC_DIR,
      '-o',
      out,
      '-c',
      early,
      '-p',
      `(hd0,msdos${opts.bootPartition})${opts.grubPath}`,
      ...CORE_MODULES,
    ],
    { timeoutMs: 120_000 },
  );
  const core = await fsp.readFile(out);
  if (core.length < 2 * SECTOR) grubError(`grub-mkimage wrote an implausibly small core image (${core.length} bytes)`);
  return core;
}

/** Sectors core.img occupies. */
export function coreSectors(core: Buffer): number {
  return Math.ceil(core.length / SECTOR);
}

/** core.img padded to whole sectors, its block list pointing at the sectors after `coreLba`. */
export function placeCoreImage(core: Buffer, coreLba: number): Buffer {
  const sectors = coreSectors(core);
  const out = Buffer.alloc(sectors * SECTOR);
  core.copy(out);
  const len = out.readUInt16LE(DISKBOOT_BLOCKLIST_LEN);
  if (len !== sectors - 1) {
    grubError(`core image block list says ${len} sectors follow the first, but the image has ${sectors}: not an i386-pc core image`);
  }
  out.writeBigUInt64LE(BigInt(coreLba + 1), DISKBOOT_BLOCKLIST_START);
  return out;
}

/** The LBA of the rest of core.img as its first sector's block list holds it. */
export function coreBlocklistStart(coreFirstSector: Buffer): number {
  return Number(coreFirstSector.readBigUInt64LE(DISKBOOT_BLOCKLIST_START));
}

/** Module files (`*.mod`, `*.lst`) of the build host's i386-pc GRUB, which `normal` and grub.cfg load. */
export async function grubModuleFiles(grubDir = GRUB_I386_PC_DIR): Promise<string[]> {
  const names = await fsp.readdir(grubDir).catch(() => grubError(`${grubDir} is missing: install Debian's grub-pc-bin`));
  const files = names.filter((n) => /^[A-Za-z0-9_.-]+\.(mod|lst)$/.test(n)).sort();
  if (!files.includes('normal.mod')) grubError(`${grubDir} has no normal.mod: not a GRUB i386-pc module directory`);
  return files;
}

/** The version of the host's GRUB (`2.06-13+deb12u2`), for the change list; null when unknown. */
export async function grubVersion(): Promise<string | null> {
  const r = await run('grub-mkimage', ['--version'], { allowExit: [1, 64] }).catch(() => null);
  return r ? (/([\d][\w.+~:-]*)\s*$/.exec(r.stdout.trim())?.[1] ?? null) : null;
}

export interface GrubKernel {
  version: string;
  /** Paths as GRUB sees them inside the boot filesystem (`/boot/vmlinuz-6.1.0-13-amd64`). */
  kernel: string;
  initrd: string | null;
}

export interface GrubConfigOptions {
  bootFsUuid: string;
  kernels: GrubKernel[];
  /** Kernel command line after `root=UUID=... ro`. */
  args: string[];
  rootFsUuid: string;
  osName: string;
}

/** Compares kernel versions the way people read them: numeric runs as numbers. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    if (x === y) continue;
    if (i % 2 === 1) return Number(x) - Number(y);
    return x < y ? -1 : 1;
  }
  return 0;
}

const SAFE_ARG = /^[A-Za-z0-9_.,:=/+@-]+$/;
const SAFE_WORDS = /^[A-Za-z0-9 ._()/+-]+$/;

/**
 * grub.cfg for BIOS boot on a serial console: no menu delay, newest kernel first, each with its
 * initrd. Everything interpolated is checked against a strict character set, since grub.cfg is a
 * script and names come from the guest.
 */
export function grubConfig(opts: GrubConfigOptions): string {
  for (const u of [opts.bootFsUuid, opts.rootFsUuid]) if (!UUID_RE.test(u)) grubError(`'${u}' is not a filesystem UUID`);
  for (const a of opts.args) if (!SAFE_ARG.test(a)) grubError(`kernel argument '${a}' has characters grub.cfg cannot carry`);
  const osName = SAFE_WORDS.test(opts.osName) ? opts.osName : 'Linux';
  const lines = [
    '# BIOS boot configuration written by vmrestore when this disk was converted from UEFI to BIOS',
    '# (Azure Generation 1). Running update-grub in the guest replaces it.',
    'serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1',
    'terminal_input serial console',
    'terminal_output serial console',
    'set timeout=0',
    'set timeout_style=hidden',
    'set default=0',
    'insmod part_msdos',
    'insmod ext2',
    `search --no-floppy --fs-uuid --set=root ${opts.bootFsUuid}`,
  ];
  for (const k of opts.kernels) {
    for (const p of [k.kernel, k.initrd])
      if (p !== null && !/^(\/[A-Za-z0-9._+-]+)+$/.test(p)) grubError(`kernel file '${p}' has an unsupported name`);
    lines.push(
      '',
      `menuentry '${osName}, with Linux ${k.version}' --id 'vmrestore-${k.version}' {`,
      `\techo 'Loading Linux ${k.version} ...'`,
      `\tlinux ${k.kernel} root=UUID=${opts.rootFsUuid} ro ${opts.args.join(' ')}`.trimEnd(),
    );
    if (k.initrd) lines.push(`\techo 'Loading initial ramdisk ...'`, `\tinitrd ${k.initrd}`);
    lines.push('}');
  }
  return lines.join('\n') + '\n';
}
