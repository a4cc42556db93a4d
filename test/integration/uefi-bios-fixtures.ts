import { ensureGuestImage } from '../../src/lab/guests';
import { spawn } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { run } from '../../src/guest/exec';
import { Ext4Volume, makeExt4FromTree } from '../../src/guest/linux/ext4';
import { writePartitionTable, writeRangeInto, type PartitionSpec } from '../../src/guest/disk/partition';

/**
 * UEFI test disks for the UEFI-to-BIOS conversion tests: GPT, an EFI system partition (FAT32 with a
 * removable-media boot file) and an ext4 root whose fstab mounts the ESP at /boot/efi. With the lab's
 * debootstrap base tree (a real Debian kernel and initramfs) the disk boots; without it the root holds
 * a placeholder kernel, enough for GRUB to load and print its entry.
 */

const MiB = 1024 * 1024;
export const ROOT_UUID = '3f0c2a8e-5b1d-4c7e-9a26-1d4e8b7c6a50';
export const ESP_VOLUME_ID = '1A2B3C4D';
export const ESP_UUID = '1A2B-3C4D';

/** A completed debootstrap tree of the lab's guest builder, if one is cached on this machine. */
export async function findBaseTree(): Promise<string | null> {
  const dir = join(homedir(), '.cache/vmrestore/guests');
  const names = await fsp.readdir(dir).catch(() => [] as string[]);
  for (const n of names.filter((x) => x.startsWith('base-')).sort()) {
    const root = join(dir, n, 'root');
    if (!existsSync(join(dir, n, 'complete.json'))) continue;
    const boot = await fsp.readdir(join(root, 'boot')).catch(() => [] as string[]);
    if (boot.some((b) => b.startsWith('vmlinuz-')) && boot.some((b) => b.startsWith('initrd.img-'))) return root;
  }
  return null;
}

/** The lab builder's own UEFI Debian guest image (built once with debootstrap, then cached). */
export async function findBuiltUefiGuest(): Promise<{ osDisk: string; dataDisk: string; rootUuid: string }> {
  const { image } = await ensureGuestImage('debian12-uefi');
  return { osDisk: image.osDisk, dataDisk: image.dataDisk, rootUuid: image.rootPartition.fsUuid };
}

export interface UefiLinuxDisk {
  imagePath: string;
  bootable: boolean;
  kernelVersion: string;
  esp: PartitionSpec;
  root: PartitionSpec;
}

async function sparse(p: string, size: number): Promise<void> {
  const fh = await fsp.open(p, 'w');
  await fh.truncate(size);
  await fh.close();
}

export interface UefiLinuxDiskOptions {
  baseTree: string | null;
  /** First sector of the first partition (2048 by default). */
  firstLba?: number;
  /**
   * ESP right after the GPT (sector 34), then GRUB's BIOS boot partition (1 MiB), then the root, and an
   * fstab naming them the way that breaks with an MBR: /dev/sda3 and PARTUUID=.
   */
  biosBootPartition?: boolean;
}

export async function buildUefiLinuxDisk(dir: string, opts: UefiLinuxDiskOptions): Promise<UefiLinuxDisk> {
  const imagePath = join(dir, 'uefi-linux.img');
  const size = opts.baseTree ? 2048 * MiB : 160 * MiB;
  await sparse(imagePath, size);
  const espStart = (opts.biosBootPartition ? 34 : (opts.firstLba ?? 2048)) * 512;
  const esp: PartitionSpec = {
    startBytes: espStart,
    sizeBytes: 33 * MiB,
    type: 'efi',
    name: 'EFI System',
    uuid: 'C0FFEE00-0000-4000-8000-000000000001',
  };
  const biosBootStart = Math.ceil((espStart + esp.sizeBytes) / MiB) * MiB;
  const rootStart = opts.biosBootPartition ? biosBootStart + MiB : biosBootStart;
  const root: PartitionSpec = {
    startBytes: rootStart,
    sizeBytes: size - rootStart - MiB,
    type: 'linux',
    name: 'root',
    uuid: 'C0FFEE00-0000-4000-8000-000000000002',
  };
  if (opts.firstLba === undefined && !opts.biosBootPartition) {
    await writePartitionTable(imagePath, { scheme: 'gpt', diskId: '5EED0000-1111-4222-8333-444455556666', partitions: [esp, root] });
  } else {
    // A table with no alignment gap (first usable sector right after the GPT entries), as old tools made.
    const line = (p: PartitionSpec, type: string) => `start=${p.startBytes / 512}, size=${p.sizeBytes / 512}, type=${type}`;
    const script = [
      'label: gpt',
      'first-lba: 34',
      `${line(esp, 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B')}, uuid=${esp.uuid}`,
      ...(opts.biosBootPartition ? [`start=${biosBootStart / 512}, size=2048, type=21686148-6449-6E6F-744E-656564454649`] : []),
      `${line(root, '0FC63DAF-8483-4772-8E79-3D69D8477DE4')}, uuid=${root.uuid}`,
    ];
    await run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', imagePath], { input: script.join('\n') + '\n', env: { LC_ALL: 'C' } });
  }

  const espImg = join(dir, 'esp.img');
  await run('mkfs.vfat', ['-F', '32', '-i', ESP_VOLUME_ID, '-n', 'ESP', '-C', espImg, String(esp.sizeBytes / 1024)]);
  await fsp.writeFile(join(dir, 'BOOTX64.EFI'), 'MZ placeholder UEFI boot loader\r\n');
  await run('mmd', ['-i', espImg, '::/EFI', '::/EFI/BOOT']);
  await run('mcopy', ['-i', espImg, join(dir, 'BOOTX64.EFI'), '::/EFI/BOOT/BOOTX64.EFI']);
  await writeRangeInto(imagePath, esp.startBytes, espImg, { dstIsZero: true });
  await fsp.rm(espImg);

  let kernelVersion = '6.1.0-99-amd64';
  let tree = opts.baseTree;
  if (!tree) {
    tree = join(dir, 'tree');
    await fsp.mkdir(join(tree, 'boot'), { recursive: true });
    await fsp.mkdir(join(tree, 'etc'), { recursive: true });
    await fsp.writeFile(join(tree, 'boot', `vmlinuz-${kernelVersion}`), 'not a real kernel\n');
    await fsp.writeFile(join(tree, 'boot', `initrd.img-${kernelVersion}`), 'not a real initrd\n');
    await fsp.writeFile(join(tree, 'boot', 'vmlinuz-5.10.0-9-amd64'), 'an older placeholder kernel\n');
    await fsp.writeFile(join(tree, 'boot', 'initrd.img-5.10.0-9-amd64'), 'an older placeholder initrd\n');
  } else {
    const v = (await fsp.readdir(join(tree, 'boot'))).find((b) => b.startsWith('vmlinuz-'))!;
    kernelVersion = v.slice('vmlinuz-'.length);
  }
  await makeExt4FromTree(imagePath, { offsetBytes: root.startBytes, sizeBytes: root.sizeBytes, tree, uuid: ROOT_UUID, label: 'root' });
  if (tree !== opts.baseTree) await fsp.rm(tree, { recursive: true, force: true });

  // What a UEFI Debian install leaves behind: ESP at /boot/efi, GRUB's EFI configuration, quiet boot.
  const vol = new Ext4Volume(imagePath, root.startBytes);
  await vol.apply([
    {
      op: 'write',
      path: '/etc/fstab',
      content: [
        '# /etc/fstab: static file system information.',
        `${opts.biosBootPartition ? '/dev/sda3' : `UUID=${ROOT_UUID}`} /               ext4    errors=remount-ro 0       1`,
        `${opts.biosBootPartition ? `PARTUUID=${esp.uuid!.toLowerCase()}` : `UUID=${ESP_UUID}`}  /boot/efi       vfat    umask=0077      0       1`,
        '',
      ].join('\n'),
    },
    {
      op: 'write',
      path: '/etc/default/grub',
      content: 'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="net.ifnames=0 rootdelay=300"\n',
    },
    {
      op: 'write',
      path: '/boot/grub/grub.cfg',
      content: `insmod part_gpt\ninsmod fat\nsearch --fs-uuid --set=root ${ROOT_UUID}\nmenuentry 'Debian (EFI)' {\n\tlinux /boot/vmlinuz-${kernelVersion} root=UUID=${ROOT_UUID} ro quiet\n}\n`,
    },
    { op: 'write', path: '/etc/os-release', content: 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nID=debian\n' },
  ]);
  return { imagePath, bootable: opts.baseTree !== null, kernelVersion, esp, root };
}

export interface SerialBoot {
  /** Milliseconds from qemu start until each pattern first appeared; missing patterns did not. */
  seen: Map<string, number>;
  log: string;
}

/**
 * Boots disk images under SeaBIOS in qemu (TCG, snapshot so the images stay unchanged) as SCSI disks,
 * the first one booted (sda, as Azure Generation 1 presents the OS disk), and watches the serial
 * console until every pattern appeared or the time is up.
 */
export async function bootUnderSeaBios(disks: string[], logPath: string, patterns: string[], timeoutMs: number): Promise<SerialBoot> {
  const drives = disks.flatMap((d, i) => [
    '-drive',
    `file=${d},format=raw,if=none,id=disk${i},snapshot=on`,
    '-device',
    `scsi-hd,drive=disk${i},bus=scsi0.0,scsi-id=${i}${i === 0 ? ',bootindex=0' : ''}`,
  ]);
  const bios = existsSync('/usr/share/seabios/bios.bin') ? ['-bios', '/usr/share/seabios/bios.bin'] : [];
  const child = spawn(
    'qemu-system-x86_64',
    [
      '-accel',
      'tcg',
      '-m',
      '1024',
      '-smp',
      '2',
      ...bios,
      '-display',
      'none',
      '-monitor',
      'none',
      '-serial',
      `file:${logPath}`,
      '-device',
      'virtio-scsi-pci,id=scsi0',
      ...drives,
      '-nic',
      'none',
      '-no-reboot',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  let exited = false;
  child.on('close', () => (exited = true));
  const start = Date.now();
  const seen = new Map<string, number>();
  let log = '';
  try {
    while (Date.now() - start < timeoutMs && seen.size < patterns.length && !exited) {
      await new Promise((r) => setTimeout(r, 250));
      log = await fsp.readFile(logPath, 'latin1').catch(() => '');
      for (const p of patterns) if (!seen.has(p) && log.includes(p)) seen.set(p, Date.now() - start);
    }
  } finally {
    if (!exited) child.kill('SIGKILL');
    await new Promise<void>((r) => (exited ? r() : child.on('close', () => r())));
  }
  log = await fsp.readFile(logPath, 'latin1').catch(() => '');
  if (stderr.trim()) log += `\n[qemu stderr] ${stderr.trim()}`;
  return { seen, log };
}
