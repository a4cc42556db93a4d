import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { Ext4Volume, type Ext4Op } from '../linux/ext4';
import { probeFilesystem, readPartitionTable, type FilesystemInfo } from './partition';
import { lineDiff, sectorChange, sha256Of, type BootChange, type BootConversionResult } from './boot-change';
import { SECTOR, planGptToMbr, readSectors, writeMbr, type GptToMbrPlan, type MbrEntryPlan } from './gpt-to-mbr';
import {
  CORE_MODULES,
  GRUB_I386_PC_DIR,
  bootCodeCoreLba,
  buildCoreImage,
  compareVersions,
  coreBlocklistStart,
  coreSectors,
  grubBootCode,
  grubConfig,
  grubModuleFiles,
  grubVersion,
  isGrubBootCode,
  placeCoreImage,
  readBootImage,
  type GrubKernel,
} from './grub-bios';

/**
 * A UEFI Linux disk made to boot with BIOS firmware (Azure Generation 1): GPT → MBR, GRUB for i386-pc
 * in the MBR and the post-MBR gap, a grub.cfg built from the guest's kernels, and fstab entries that
 * would fail without UEFI made harmless. Everything is decided and checked before the first write;
 * guest files are written in one debugfs run, then the sectors outside the partitions.
 */

export interface LinuxUefiToBiosOptions {
  /** Scratch directory for grub-mkimage's files (small). */
  workDir: string;
  /** The build host's i386-pc GRUB directory (Debian's grub-pc-bin). */
  grubDir?: string;
}

const SERIAL_ARGS = ['console=tty0', 'console=ttyS0,115200n8'];
/** Dropped from the guest's kernel arguments: boot noise, console settings we replace, and delays. */
const DROPPED_ARG = /^(quiet|splash|rhgb|ro|rw|BOOT_IMAGE=.*|root=.*|console=.*|rootdelay=.*|initrd=.*)$/;
const KERNEL_NAME = /^vmlinuz-([A-Za-z0-9._+-]+)$/;
const EFI_MOUNTS = new Set(['/boot/efi', '/efi']);

interface Candidate {
  entry: MbrEntryPlan;
  fs: FilesystemInfo;
  offset: number;
}

function fail(imagePath: string, why: string): never {
  throw new RestoreError(FailureType.GuestPreparation, `${imagePath}: cannot convert this UEFI Linux disk to BIOS boot: ${why}`);
}

interface FstabLine {
  raw: string;
  fields: string[] | null;
}

function parseFstab(text: string): FstabLine[] {
  return text.split('\n').map((raw) => {
    const t = raw.trim();
    if (t === '' || t.startsWith('#')) return { raw, fields: null };
    const fields = t.split(/\s+/);
    return { raw, fields: fields.length >= 2 ? fields : null };
  });
}

/** The line with field `i` replaced, other spacing kept. */
function withField(raw: string, i: number, value: string): string {
  const parts = raw.split(/(\s+)/);
  const lead = parts[0] === '' ? 2 : 0;
  const at = lead + i * 2;
  if (at >= parts.length) {
    // fstab lines may stop after the mount point or type; missing fields are filled with defaults.
    const fields = raw.trim().split(/\s+/);
    const defaults = ['none', 'none', 'auto', 'defaults', '0', '0'];
    while (fields.length <= i) fields.push(defaults[fields.length]!);
    fields[i] = value;
    return fields.join('\t');
  }
  parts[at] = value;
  return parts.join('');
}

function unescapeFstab(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Which kept partition an fstab device spec names, if any. */
function resolveSpec(spec: string, candidates: Candidate[], gptUuids: Map<number, string>): Candidate | null {
  const s = unescapeFstab(spec);
  const m = /^(UUID|LABEL|PARTUUID)=(.*)$/.exec(s) ?? /^\/dev\/disk\/by-(uuid|label|partuuid)\/(.*)$/.exec(s);
  if (m) {
    const kind = m[1]!.toUpperCase();
    const value = m[2]!.replace(/^"(.*)"$/, '$1');
    return (
      candidates.find((c) =>
        kind === 'UUID'
          ? c.fs.uuid.toLowerCase() === value.toLowerCase()
          : kind === 'LABEL'
            ? c.fs.label === value
            : gptUuids.get(c.entry.gptIndex)?.toLowerCase() === value.toLowerCase(),
      ) ?? null
    );
  }
  const dev = /^\/dev\/(?:[sv]da|xvda|hda)(\d+)$/.exec(s) ?? /^\/dev\/nvme0n1p(\d+)$/.exec(s);
  if (dev) return candidates.find((c) => c.entry.gptIndex === Number(dev[1])) ?? null;
  return null;
}

/** Splits a shell-style assignment value from /etc/default/grub (single line, simple quoting only). */
function defaultGrubArgs(text: string | null, warnings: string[]): string[] {
  if (!text) return [];
  const out: string[] = [];
  for (const key of ['GRUB_CMDLINE_LINUX', 'GRUB_CMDLINE_LINUX_DEFAULT']) {
    const m = new RegExp(`^${key}=(?:"([^"$\`\\\\]*)"|'([^']*)'|(\\S*))\\s*$`, 'm').exec(text);
    if (!m) continue;
    for (const arg of (m[1] ?? m[2] ?? m[3] ?? '').split(/\s+/).filter(Boolean)) {
      if (DROPPED_ARG.test(arg)) continue;
      if (!/^[A-Za-z0-9_.,:=/+@-]+$/.test(arg)) {
        warnings.push(`kernel argument '${arg}' from /etc/default/grub left out of the BIOS grub.cfg: unsupported characters`);
        continue;
      }
      if (!out.includes(arg)) out.push(arg);
    }
  }
  return out;
}

function osNameOf(osRelease: string | null): string {
  const m = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(osRelease ?? '') ?? /^NAME="?([^"\n]*)"?$/m.exec(osRelease ?? '');
  return m?.[1]?.trim() || 'Linux';
}

/** A disk this conversion already made BIOS-bootable: MBR, GRUB boot code, core image where it points. */
async function alreadyConverted(imagePath: string, grubDir: string): Promise<boolean> {
  const table = await readPartitionTable(imagePath).catch(() => null);
  if (table?.scheme !== 'mbr') return false;
  const sector0 = await readSectors(imagePath, 0, 1);
  if (!isGrubBootCode(sector0, await readBootImage(grubDir))) return false;
  const coreLba = bootCodeCoreLba(sector0);
  const first = await readSectors(imagePath, coreLba, 1);
  return coreBlocklistStart(first) === coreLba + 1;
}

/** Free sectors for core.img: the gap after the MBR, else a dropped BIOS boot partition. */
function coreLocation(imagePath: string, plan: GptToMbrPlan, sectors: number): { lba: number; where: string } {
  const firstUsed = Math.min(
    ...plan.entries.map((e) => e.startLba),
    ...plan.dropped.filter((d) => !/^BIOS boot/.test(d.reason)).map((d) => d.startLba),
  );
  if (firstUsed - 1 >= sectors) return { lba: 1, where: 'the gap after the MBR' };
  const biosBoot = plan.dropped.find((d) => /^BIOS boot/.test(d.reason) && d.sectors >= sectors);
  if (biosBoot) return { lba: biosBoot.startLba, where: `the former BIOS boot partition (GPT ${biosBoot.gptIndex})` };
  return fail(
    imagePath,
    `the first partition starts at sector ${firstUsed}, leaving ${firstUsed - 1} sectors after the MBR, but GRUB's core image needs ${sectors}; ` +
      'moving partitions is not done here: restore as Generation 2 to keep UEFI',
  );
}

export async function convertLinuxUefiToBios(imagePath: string, opts: LinuxUefiToBiosOptions): Promise<BootConversionResult> {
  const grubDir = opts.grubDir ?? GRUB_I386_PC_DIR;
  if (await alreadyConverted(imagePath, grubDir)) {
    return { changes: [], warnings: [`${imagePath} already boots with BIOS GRUB from an MBR; nothing converted`] };
  }
  const warnings: string[] = [];
  const bootImg = await readBootImage(grubDir);
  const moduleFiles = await grubModuleFiles(grubDir);
  const gptTable = await readPartitionTable(imagePath);
  const gptUuids = new Map(gptTable.partitions.map((p) => [p.index, p.uuid ?? '']));

  // The root filesystem: the ext2/3/4 partition with /etc/fstab.
  const provisional = await planGptToMbr(imagePath);
  const candidates: Candidate[] = [];
  for (const entry of provisional.entries) {
    const offset = entry.startLba * SECTOR;
    const fs = await probeFilesystem(imagePath, offset);
    if (fs) candidates.push({ entry, fs, offset });
  }
  let root: Candidate | null = null;
  let fstabText: string | null = null;
  for (const c of candidates.filter((c) => /^ext[234]$/.test(c.fs.type))) {
    const text = await new Ext4Volume(imagePath, c.offset).readText('/etc/fstab');
    if (text !== null) {
      root = c;
      fstabText = text;
      break;
    }
  }
  if (!root || fstabText === null) {
    fail(
      imagePath,
      `no ext2/3/4 partition holds /etc/fstab (found: ${candidates.map((c) => `${c.entry.gptIndex}:${c.fs.type}`).join(', ') || 'none'})`,
    );
  }
  const rootVol = new Ext4Volume(imagePath, root.offset);
  const fstab = parseFstab(fstabText);

  // /boot on its own filesystem, or inside the root.
  const bootLine = fstab.find((l) => l.fields?.[1] === '/boot');
  let boot: Candidate = root;
  let bootPrefix = '/boot';
  if (bootLine) {
    const c = resolveSpec(bootLine.fields![0]!, candidates, gptUuids);
    if (!c) fail(imagePath, `/etc/fstab mounts /boot from '${bootLine.fields![0]}', which is none of the disk's partitions`);
    if (!/^ext[234]$/.test(c.fs.type)) fail(imagePath, `/boot is ${c.fs.type}; only ext2/3/4 can be written without mounting`);
    boot = c;
    bootPrefix = '';
  }
  const bootVol = new Ext4Volume(imagePath, boot.offset);
  const grubPath = `${bootPrefix}/grub`;

  // Kernels and their initrds.
  const bootDir = bootPrefix || '/';
  const names = new Set(((await bootVol.list(bootDir)) ?? []).filter((e) => e.type !== 'directory').map((e) => e.name));
  const kernels: GrubKernel[] = [];
  for (const n of names) {
    const m = KERNEL_NAME.exec(n);
    if (!m) continue;
    const v = m[1]!;
    const initrd = [`initrd.img-${v}`, `initramfs-${v}.img`, `initrd-${v}.img`, `initrd-${v}`].find((i) => names.has(i)) ?? null;
    if (!initrd) warnings.push(`kernel ${v} has no initrd in ${bootDir}; its menu entry boots without one`);
    kernels.push({ version: v, kernel: `${bootPrefix}/${n}`, initrd: initrd ? `${bootPrefix}/${initrd}` : null });
  }
  kernels.sort((a, b) => compareVersions(b.version, a.version));
  if (kernels.length === 0) fail(imagePath, `no kernel (vmlinuz-*) in ${bootDir} of partition ${boot.entry.gptIndex}`);

  const [defaultGrub, osRelease, oldCfg] = await Promise.all([
    rootVol.readText('/etc/default/grub'),
    rootVol.readText('/etc/os-release'),
    bootVol.readText(`${grubPath}/grub.cfg`),
  ]);
  const args = [...defaultGrubArgs(defaultGrub, warnings), ...SERIAL_ARGS];
  const cfg = grubConfig({ bootFsUuid: boot.fs.uuid, rootFsUuid: root.fs.uuid, kernels, args, osName: osNameOf(osRelease) });

  // The final MBR: the partition holding GRUB's files active (old BIOSes boot only a disk with one).
  const plan = await planGptToMbr(imagePath, { activeGptIndex: boot.entry.gptIndex });
  const espKept = plan.entries.some((e) => e.typeCode === 0xef);

  // fstab: the ESP mount must not stop the boot, and references that die with GPT go to UUID=.
  const fstabChanges: string[] = [];
  const newLines = fstab.map((l) => {
    if (!l.fields) return l.raw;
    const [spec, mnt] = l.fields as [string, string];
    if (EFI_MOUNTS.has(mnt) && !espKept) {
      fstabChanges.push(`${mnt} commented out: the EFI system partition is not in the MBR`);
      return `# ${l.raw} # disabled by vmrestore: no EFI system partition after conversion to BIOS boot`;
    }
    let line = l.raw;
    const isPartuuid = /^PARTUUID=|^\/dev\/disk\/by-partuuid\//.test(spec);
    const dev = /^\/dev\/(?:[sv]da|xvda|hda|nvme0n1p)(\d+)$/.exec(spec);
    const target = resolveSpec(spec, candidates, gptUuids);
    const renumbered = dev && target && target.entry.mbrIndex !== target.entry.gptIndex;
    if ((isPartuuid || renumbered) && target && target.fs.uuid) {
      const why = isPartuuid ? 'GPT partition UUIDs do not exist with an MBR' : 'the partition number changes with the MBR';
      fstabChanges.push(`${mnt} by UUID=${target.fs.uuid}: ${why}`);
      line = withField(line, 0, `UUID=${target.fs.uuid}`);
    }
    if (EFI_MOUNTS.has(mnt)) {
      const options = (l.fields[3] ?? 'defaults').split(',');
      if (!options.includes('nofail')) {
        fstabChanges.push(`${mnt} mounted with nofail: BIOS boot does not need it`);
        line = withField(line, 3, [...options.filter((o) => o !== 'defaults' || options.length === 1), 'nofail'].join(','));
      }
    }
    return line;
  });
  const newFstab = newLines.join('\n');

  const core = await buildCoreImage({
    workDir: opts.workDir,
    bootFsUuid: boot.fs.uuid,
    bootPartition: plan.renumbered.get(boot.entry.gptIndex)!,
    grubPath,
    grubDir,
  });
  const sectors = coreSectors(core);
  const loc = coreLocation(imagePath, plan, sectors);
  const placed = placeCoreImage(core, loc.lba);
  const bootCode = grubBootCode(bootImg, loc.lba);

  // Guest files, in one debugfs run per filesystem.
  const bootOps: Ext4Op[] = [{ op: 'write', path: `${grubPath}/grub.cfg`, content: cfg, mode: 0o644 }];
  for (const f of moduleFiles) {
    bootOps.push({ op: 'write', path: `${grubPath}/i386-pc/${f}`, content: await fsp.readFile(path.join(grubDir, f)), mode: 0o644 });
  }
  bootOps.push({ op: 'write', path: `${grubPath}/i386-pc/core.img`, content: core, mode: 0o644 });
  bootOps.push({ op: 'write', path: `${grubPath}/i386-pc/boot.img`, content: bootImg, mode: 0o644 });
  const rootOps: Ext4Op[] = newFstab !== fstabText ? [{ op: 'write', path: '/etc/fstab', content: newFstab }] : [];
  if (boot === root) await rootVol.apply([...rootOps, ...bootOps]);
  else {
    await bootVol.apply(bootOps);
    await rootVol.apply(rootOps);
  }

  const version = await grubVersion();
  const changes: BootChange[] = [
    {
      path: `${grubPath}/grub.cfg`,
      action: oldCfg === null ? 'create' : 'edit',
      description: `BIOS GRUB configuration: ${kernels.length} kernel(s), newest first, root UUID=${root.fs.uuid}, serial console, no menu delay`,
      sha256Before: sha256Of(oldCfg),
      sha256After: sha256Of(cfg),
      diff: lineDiff(
        null,
        cfg
          .split('\n')
          .filter((l) => /^\s*(linux|initrd|search)\s/.test(l))
          .join('\n'),
      ),
    },
    {
      path: `${grubPath}/i386-pc/`,
      action: 'create',
      description: `${moduleFiles.length} GRUB i386-pc module files, core.img and boot.img from the build host's grub-pc-bin${version ? ` ${version}` : ''}, so the BIOS core image can load normal and grub.cfg`,
      sha256Before: null,
      sha256After: sha256Of(core),
      diff: [],
    },
  ];
  if (rootOps.length) {
    changes.push({
      path: '/etc/fstab',
      action: 'edit',
      description: fstabChanges.join('; '),
      sha256Before: sha256Of(fstabText),
      sha256After: sha256Of(newFstab),
      diff: lineDiff(fstabText, newFstab),
    });
  }

  // Sectors outside the partitions: the MBR (also wiping the GPT), then the core image.
  changes.push(...(await writeMbr(imagePath, plan, bootCode, `GRUB's i386-pc boot code (core image at sector ${loc.lba})`)));
  const beforeCore = await readSectors(imagePath, loc.lba, sectors);
  const fh = await fsp.open(imagePath, 'r+');
  try {
    await fh.write(placed, 0, placed.length, loc.lba * SECTOR);
  } finally {
    await fh.close();
  }
  changes.push(
    sectorChange(
      loc.lba,
      loc.lba + sectors - 1,
      'GRUB core image',
      `GRUB i386-pc core image in ${loc.where}, finding ${grubPath} on the filesystem UUID=${boot.fs.uuid}`,
      beforeCore,
      placed,
      [`+ core.img (${core.length} bytes; modules ${CORE_MODULES.join(' ')})`],
    ),
  );

  warnings.push(
    'the guest still has its UEFI boot loader packages: install grub-pc in the guest (and remove grub-efi-amd64) so that later GRUB updates keep the BIOS boot loader',
  );
  for (const d of plan.dropped) warnings.push(`GPT partition ${d.gptIndex} not carried into the MBR: ${d.reason}`);
  return { changes, warnings };
}
