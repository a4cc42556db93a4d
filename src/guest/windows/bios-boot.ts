import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { sha256Of, type BootChange, type BootConversionResult } from '../disk/boot-change';
import { SECTOR, planGptToMbr, readSectors, writeMbr, type MbrEntryPlan } from '../disk/gpt-to-mbr';
import { PartitionCopy, hasNtfsBootSector, ntfsListDir, ntfsReadFile, ntfsResolvePath, withNtfsMount } from './ntfs';
import { readPartitionTable } from '../disk/partition';
import { HiveReader, decodeValue } from './regf';
import { BOOTMGR_GUID, loaderGuidFor, writeBiosBcd, type BiosBcdSpec } from './bcd';

/**
 * A UEFI Windows disk made to boot with BIOS firmware (Azure Generation 1), the way a BIOS install of
 * Windows on one partition looks: an MBR whose code starts the active partition's boot sector, the
 * Windows partition active, `\bootmgr` (the guest's own `Windows\Boot\PCAT\bootmgr`) and a BIOS
 * `\Boot\BCD` store on it. Nothing is taken from outside the guest but the MBR code.
 *
 * MBR code: Windows does not ship its MBR code as a file (bootsect.exe carries it inside), so the MBR
 * gets syslinux's mbr.bin from Debian's syslinux-common: 440 bytes of GPL code that, like Windows' own
 * MBR, loads the boot sector of the single active partition and jumps to it. The NTFS boot sector
 * Windows' format wrote then loads \bootmgr; a volume formatted by another tool may lack that code,
 * which is reported as a warning.
 */

export const SYSLINUX_MBR = '/usr/lib/syslinux/mbr/mbr.bin';

export interface WindowsUefiToBiosOptions {
  /** Scratch directory: a sparse copy of the Windows volume and the new BCD hive. */
  workDir: string;
  /** MBR boot code file (440 bytes); default syslinux's mbr.bin. */
  mbrCodePath?: string;
}

const PCAT_DIR = 'Windows/Boot/PCAT';
const LOCALE_DIR = /^[a-z]{2,3}-[A-Z]{2}$/;

function fail(imagePath: string, why: string): never {
  throw new RestoreError(FailureType.GuestPreparation, `${imagePath}: cannot convert this UEFI Windows disk to BIOS boot: ${why}`);
}

async function readMbrCode(file: string): Promise<Buffer> {
  const code = await fsp.readFile(file).catch(() => {
    throw new RestoreError(
      FailureType.Configuration,
      `${file} is missing: install Debian's syslinux-common on the machine that converts disks (it provides the MBR boot code)`,
    );
  });
  if (code.length === 0 || code.length > 440)
    throw new RestoreError(FailureType.Configuration, `${file} is ${code.length} bytes; MBR code is at most 440`);
  return code;
}

/**
 * MBR boot code and an active NTFS partition holding \bootmgr and \Boot\BCD: converted before, or a
 * BIOS installation to begin with.
 */
async function alreadyBios(imagePath: string, dir: string): Promise<boolean> {
  const table = await readPartitionTable(imagePath).catch(() => null);
  if (table?.scheme !== 'mbr') return false;
  if ((await readSectors(imagePath, 0)).subarray(0, 440).every((b) => b === 0)) return false;
  const active = table.partitions.find((p) => p.bootable);
  if (!active || !(await hasNtfsBootSector(imagePath, active.startBytes))) return false;
  const part = join(dir, 'active.img');
  try {
    await PartitionCopy.extract(imagePath, active.startBytes, active.sizeBytes, part);
    return (await ntfsResolvePath(part, 'bootmgr')) !== null && (await ntfsResolvePath(part, 'Boot/BCD')) !== null;
  } finally {
    await fsp.rm(part, { force: true });
  }
}

interface WindowsVolume {
  entry: MbrEntryPlan;
  copy: PartitionCopy;
}

/** The NTFS partition with Windows\System32\config\SYSTEM, smallest first (cheaper to rule out). */
async function findWindows(imagePath: string, entries: MbrEntryPlan[], dir: string): Promise<WindowsVolume> {
  const ntfs: MbrEntryPlan[] = [];
  for (const e of entries) if (await hasNtfsBootSector(imagePath, e.startLba * SECTOR)) ntfs.push(e);
  ntfs.sort((a, b) => a.sectors - b.sectors);
  for (const [i, e] of ntfs.entries()) {
    const copy = await PartitionCopy.extract(imagePath, e.startLba * SECTOR, e.sectors * SECTOR, join(dir, `volume-${i}.img`));
    const config = await ntfsResolvePath(copy.partPath, 'Windows/System32/config');
    if (config && (await ntfsListDir(copy.partPath, config))?.some((n) => n.toUpperCase() === 'SYSTEM')) return { entry: e, copy };
    await fsp.rm(copy.partPath, { force: true });
  }
  return fail(imagePath, `no NTFS partition holds \\Windows\\System32\\config\\SYSTEM (${ntfs.length} NTFS partition(s) found)`);
}

/** Product name and system root from the SOFTWARE hive, each only if it is plain text. */
async function describeWindows(part: string, dir: string): Promise<{ description: string; systemRoot: string }> {
  const fallback = { description: 'Windows', systemRoot: '\\Windows' };
  const stored = await ntfsResolvePath(part, 'Windows/System32/config/SOFTWARE');
  const data = stored ? await ntfsReadFile(part, stored) : null;
  if (!data) return fallback;
  const local = join(dir, 'SOFTWARE');
  await fsp.writeFile(local, data);
  const r = await HiveReader.open(local);
  const text = (name: string) => {
    const v = r.value('Microsoft\\Windows NT\\CurrentVersion', name);
    const d = v ? decodeValue(v.regType, v.data) : null;
    return d && (d.type === 'string' || d.type === 'expandString') ? d.value : null;
  };
  const product = text('ProductName');
  const root = /^[A-Za-z]:(\\[A-Za-z0-9._-]+)$/.exec(text('SystemRoot') ?? '')?.[1];
  return {
    description: product && /^[A-Za-z0-9 ._()-]{1,100}$/.test(product) ? product : fallback.description,
    systemRoot: root ?? fallback.systemRoot,
  };
}

/** Warnings about the partition's boot sector, which the MBR code runs and which must load \bootmgr. */
function checkBootSector(vbr: Buffer, startLba: number): string[] {
  const warnings: string[] = [];
  const hidden = vbr.readUInt32LE(0x1c);
  if (hidden !== startLba) {
    warnings.push(
      `the NTFS boot sector says the volume starts at sector ${hidden}, the partition starts at ${startLba}: run 'bootsect /nt60 C: /mbr' from recovery media if Windows does not start`,
    );
  }
  const hasBootmgrCode = vbr.includes('BOOTMGR', 0, 'latin1') || vbr.includes(Buffer.from('BOOTMGR', 'utf16le'));
  if (!hasBootmgrCode) {
    warnings.push(
      "the NTFS boot sector carries no code that loads BOOTMGR (the volume was not formatted by Windows): the VM will not start until 'bootsect /nt60 C:' is run from recovery media",
    );
  }
  return warnings;
}

export async function convertWindowsUefiToBios(imagePath: string, opts: WindowsUefiToBiosOptions): Promise<BootConversionResult> {
  const codePath = opts.mbrCodePath ?? SYSLINUX_MBR;
  const code = await readMbrCode(codePath);
  const dir = await fsp.mkdtemp(join(opts.workDir, '.winbios-'));
  try {
    if (await alreadyBios(imagePath, dir)) {
      return {
        changes: [],
        warnings: [`${imagePath} already boots with BIOS from an MBR (active partition with \\bootmgr and \\Boot\\BCD); nothing converted`],
      };
    }
    const provisional = await planGptToMbr(imagePath);
    const win = await findWindows(imagePath, provisional.entries, dir);
    const part = win.copy.partPath;
    const pcat = await ntfsResolvePath(part, PCAT_DIR);
    const bootmgrSrc = pcat ? await ntfsResolvePath(part, `${pcat}/bootmgr`) : null;
    if (!bootmgrSrc) fail(imagePath, `the Windows partition has no \\Windows\\Boot\\PCAT\\bootmgr, the BIOS boot manager`);
    if (!(await ntfsResolvePath(part, 'Windows/System32/winload.exe'))) {
      fail(imagePath, 'the Windows partition has no \\Windows\\System32\\winload.exe, the BIOS OS loader');
    }
    const plan = await planGptToMbr(imagePath, { activeGptIndex: win.entry.gptIndex });
    const bootmgr = (await ntfsReadFile(part, bootmgrSrc))!;
    const locales = ((await ntfsListDir(part, pcat!)) ?? []).filter((n) => LOCALE_DIR.test(n));
    const { description, systemRoot } = await describeWindows(part, dir);

    const offset = win.entry.startLba * SECTOR;
    const spec: BiosBcdSpec = {
      diskSignature: plan.diskSignature,
      partitionOffsetBytes: offset,
      loaderGuid: loaderGuidFor(plan.diskSignature, offset),
      description,
      systemRoot,
      locale: locales.includes('en-US') || locales.length === 0 ? 'en-US' : locales[0]!,
      timeoutSeconds: 0,
    };
    const bcdLocal = join(dir, 'BCD');
    await writeBiosBcd(bcdLocal, spec);
    const bcd = await fsp.readFile(bcdLocal);

    const oldBootmgr = await ntfsReadFile(part, 'bootmgr');
    const oldBcdPath = await ntfsResolvePath(part, 'Boot/BCD');
    const oldBcd = oldBcdPath ? await ntfsReadFile(part, oldBcdPath) : null;
    const where = `partition ${plan.renumbered.get(win.entry.gptIndex)}:`;
    const changes: BootChange[] = [];
    const copied: string[] = [];
    await withNtfsMount(part, dir, async (root) => {
      await fsp.writeFile(join(root, 'bootmgr'), bootmgr);
      await fsp.mkdir(join(root, 'Boot'), { recursive: true });
      await fsp.writeFile(join(root, 'Boot', 'BCD'), bcd);
      // The boot manager's message resources, as bcdboot lays them out for BIOS.
      for (const l of locales) {
        for (const f of (await fsp.readdir(join(root, pcat!, l)).catch(() => [] as string[])).filter((n) => /^[\w.-]+\.mui$/i.test(n))) {
          await fsp.mkdir(join(root, 'Boot', l), { recursive: true });
          await fsp.copyFile(join(root, pcat!, l, f), join(root, 'Boot', l, f));
          copied.push(`\\Boot\\${l}\\${f}`);
        }
      }
    });
    changes.push(
      {
        path: `${where}\\bootmgr`,
        action: oldBootmgr ? 'edit' : 'create',
        description: "BIOS Windows Boot Manager, copied from the guest's \\Windows\\Boot\\PCAT\\bootmgr",
        sha256Before: sha256Of(oldBootmgr),
        sha256After: sha256Of(bootmgr),
        diff: [`+ \\bootmgr (${bootmgr.length} bytes)`],
      },
      {
        path: `${where}\\Boot\\BCD`,
        action: oldBcd ? 'edit' : 'create',
        description: 'BIOS boot configuration store: Windows Boot Manager and one Windows Boot Loader entry, both on this partition',
        sha256Before: sha256Of(oldBcd),
        sha256After: sha256Of(bcd),
        diff: [
          `+ {bootmgr} ${BOOTMGR_GUID} default ${spec.loaderGuid}, timeout ${spec.timeoutSeconds}`,
          `+ ${spec.loaderGuid} '${spec.description}' \\Windows\\system32\\winload.exe`,
          `+ device/osdevice: MBR disk 0x${spec.diskSignature.toString(16).padStart(8, '0')}, partition at byte ${offset}, systemroot ${spec.systemRoot}`,
        ],
      },
    );
    if (copied.length) {
      changes.push({
        path: `${where}\\Boot\\`,
        action: 'create',
        description: `Boot manager message resources copied from \\Windows\\Boot\\PCAT: ${copied.length} file(s)`,
        sha256Before: null,
        sha256After: null,
        diff: copied.slice(0, 6).map((c) => `+ ${c}`),
      });
    }

    const warnings = checkBootSector(await readSectors(part, 0, 16), win.entry.startLba);
    await win.copy.writeBack();
    changes.push(...(await writeMbr(imagePath, plan, code, `MBR code that starts the active partition (${codePath})`)));
    for (const d of plan.dropped) warnings.push(`GPT partition ${d.gptIndex} not carried into the MBR: ${d.reason}`);
    return { changes, warnings };
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}
