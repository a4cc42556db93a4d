/**
 * Demo Windows disk images: a partitioned whole-disk image whose NTFS volume holds the parts of a
 * Windows Server installation that restore-to-Azure preparation reads and changes (SYSTEM and SOFTWARE
 * hives with the settings of a VMware guest, Hyper-V boot driver files) plus deterministic user data.
 */
import { promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../../guest/exec';
import { writePartitionTable, type PartitionSpec } from '../../guest/disk/partition';
import { embedPartition, withNtfsMount } from '../../guest/windows/ntfs';
import { createHive, type HiveKeySpec, type HiveValueData } from '../../guest/windows/regf';
import { RDP_RULE_TCP, RDP_RULE_UDP, remoteDesktopRule } from '../../guest/windows/firewall';
import { MiB } from '../../domain/units';
import { seededStream } from './seeded';

export interface WindowsDiskImageOptions {
  sizeBytes: number;
  scheme: 'mbr' | 'gpt';
  hostname: string;
  /** Approximate MiB of pseudo-random user files (default 16). */
  usedMiB?: number;
  /** Seed of the user files' sizes and contents; the same seed gives the same files. Default: hostname. */
  seed?: string;
}

export interface WindowsDiskImage {
  imagePath: string;
  ntfsPartitionOffset: number;
  ntfsPartitionSize: number;
}

const str = (value: string): HiveValueData => ({ type: 'string', value });
const exp = (value: string): HiveValueData => ({ type: 'expandString', value });
const dword = (value: number): HiveValueData => ({ type: 'dword', value });
const multi = (...value: string[]): HiveValueData => ({ type: 'multiString', value });

function controlSetKeys(cs: string, hostname: string): HiveKeySpec[] {
  const svc = `${cs}\\Services`;
  return [
    { path: `${cs}\\Control`, values: { SystemStartOptions: str(' NOEXECUTE=OPTOUT'), WaitToKillServiceTimeout: str('5000') } },
    { path: `${cs}\\Control\\ComputerName\\ComputerName`, values: { ComputerName: str(hostname.toUpperCase()) } },
    { path: `${cs}\\Control\\Terminal Server`, values: { fDenyTSConnections: dword(1), fSingleSessionPerUser: dword(1) } },
    {
      path: `${cs}\\Control\\Terminal Server\\WinStations\\RDP-Tcp`,
      values: { PortNumber: dword(3389), SecurityLayer: dword(2), UserAuthentication: dword(1) },
    },
    {
      path: `${svc}\\Dhcp`,
      values: {
        DisplayName: str('@%SystemRoot%\\system32\\dhcpcore.dll,-100'),
        ImagePath: exp('%SystemRoot%\\system32\\svchost.exe -k LocalServiceNetworkRestricted -p'),
        ObjectName: str('NT Authority\\LocalService'),
        DependOnService: multi('NSI', 'Afd'),
        Type: dword(0x20),
        Start: dword(3),
        ErrorControl: dword(1),
      },
    },
    {
      path: `${svc}\\partmgr`,
      values: { ImagePath: exp('System32\\drivers\\partmgr.sys'), Type: dword(1), Start: dword(0), ErrorControl: dword(3) },
    },
    { path: `${svc}\\partmgr\\Parameters`, values: { SanPolicy: dword(2) } },
    {
      path: `${svc}\\SharedAccess\\Parameters\\FirewallPolicy\\FirewallRules`,
      values: {
        [RDP_RULE_TCP]: str(remoteDesktopRule(RDP_RULE_TCP, false)!),
        [RDP_RULE_UDP]: str(remoteDesktopRule(RDP_RULE_UDP, false)!),
        'RemoteDesktop-Shadow-In-TCP': str(
          'v2.30|Action=Allow|Active=FALSE|Dir=In|Protocol=6|App=%SystemRoot%\\system32\\RdpSa.exe|Name=@FirewallAPI.dll,-28778|Desc=@FirewallAPI.dll,-28779|EmbedCtxt=@FirewallAPI.dll,-28752|Edge=TRUE|Defer=App|',
        ),
        'FPS-ICMP4-ERQ-In': str(
          'v2.30|Action=Allow|Active=FALSE|Dir=In|Protocol=1|Profile=Domain|ICMP4=8:*|Name=@FirewallAPI.dll,-28543|Desc=@FirewallAPI.dll,-28544|EmbedCtxt=@FirewallAPI.dll,-28502|',
        ),
      },
    },
    {
      path: `${svc}\\SharedAccess\\Parameters\\FirewallPolicy\\StandardProfile`,
      values: { EnableFirewall: dword(1) },
    },
    {
      path: `${svc}\\storvsc`,
      values: {
        ImagePath: exp('System32\\drivers\\storvsc.sys'),
        Group: str('SCSI miniport'),
        Type: dword(1),
        Start: dword(3),
        ErrorControl: dword(1),
      },
    },
    {
      path: `${svc}\\vmbus`,
      values: {
        ImagePath: exp('System32\\drivers\\vmbus.sys'),
        Group: str('System Bus Extender'),
        Type: dword(1),
        Start: dword(3),
        ErrorControl: dword(3),
      },
    },
    {
      path: `${svc}\\VMTools`,
      values: {
        DisplayName: str('VMware Tools'),
        ImagePath: exp('"C:\\Program Files\\VMware\\VMware Tools\\vmtoolsd.exe"'),
        Type: dword(0x10),
        Start: dword(2),
        ErrorControl: dword(1),
      },
    },
    { path: `${svc}\\Tcpip\\Parameters`, values: { Hostname: str(hostname), EnableDHCP: dword(1) } },
  ];
}

/** SYSTEM hive contents of the demo guest: two control sets, as Windows keeps after a good boot. */
export function demoSystemHive(hostname: string): HiveKeySpec[] {
  return [
    { path: 'Select', values: { Current: dword(1), Default: dword(1), Failed: dword(0), LastKnownGood: dword(2) } },
    ...controlSetKeys('ControlSet001', hostname),
    ...controlSetKeys('ControlSet002', hostname),
    { path: 'Setup', values: { SystemSetupInProgress: dword(0) } },
  ];
}

/** SOFTWARE hive contents of the demo guest. */
export function demoSoftwareHive(): HiveKeySpec[] {
  return [
    {
      path: 'Microsoft\\Windows NT\\CurrentVersion',
      values: {
        ProductName: str('Windows Server 2022 Datacenter'),
        EditionID: str('ServerDatacenter'),
        InstallationType: str('Server'),
        CurrentBuild: str('20348'),
        CurrentBuildNumber: str('20348'),
        CurrentMajorVersionNumber: dword(10),
        CurrentMinorVersionNumber: dword(0),
        CurrentVersion: str('6.3'),
        SystemRoot: str('C:\\Windows'),
      },
    },
    {
      path: 'Microsoft\\Windows\\CurrentVersion',
      values: { ProgramFilesDir: str('C:\\Program Files'), CommonFilesDir: str('C:\\Program Files\\Common Files') },
    },
    { path: 'Microsoft\\Windows\\CurrentVersion\\Run' },
    { path: 'Microsoft\\Windows\\CurrentVersion\\RunOnce' },
    { path: 'VMware, Inc.\\VMware Tools', values: { InstallPath: str('C:\\Program Files\\VMware\\VMware Tools\\') } },
  ];
}

function layout(sizeBytes: number, scheme: 'mbr' | 'gpt'): { partitions: PartitionSpec[]; ntfs: PartitionSpec } {
  if (scheme === 'mbr') {
    const ntfs: PartitionSpec = { startBytes: MiB, sizeBytes: sizeBytes - MiB, type: 'ntfs', bootable: true };
    return { partitions: [ntfs], ntfs };
  }
  // GPT keeps its backup table in the last sectors, so the NTFS volume stops 1 MiB short of the end.
  const efiSize = sizeBytes >= 2048 * MiB ? 100 * MiB : 16 * MiB;
  const efi: PartitionSpec = { startBytes: MiB, sizeBytes: efiSize, type: 'efi', name: 'EFI system partition' };
  const start = MiB + efiSize;
  const ntfs: PartitionSpec = { startBytes: start, sizeBytes: sizeBytes - start - MiB, type: 'ntfs', name: 'Basic data partition' };
  return { partitions: [efi, ntfs], ntfs };
}

/**
 * Builds a sparse whole-disk image with a partition table and an NTFS volume holding a minimal
 * Windows Server 2022 layout as it looks on a VMware VM (RDP off, VMware Tools on, SAN policy
 * OfflineShared, Hyper-V drivers present but demand-start). Needs ntfs-3g's FUSE mount (root).
 */
export async function buildWindowsDiskImage(imagePath: string, opts: WindowsDiskImageOptions): Promise<WindowsDiskImage> {
  const sizeBytes = Math.ceil(opts.sizeBytes / MiB) * MiB;
  const minSize = opts.scheme === 'gpt' ? 64 * MiB : 32 * MiB;
  if (!Number.isFinite(sizeBytes) || sizeBytes < minSize) {
    throw new RestoreError(FailureType.InvalidRequest, `Windows demo disk must be at least ${minSize / MiB} MiB`);
  }
  if (!/^[A-Za-z0-9-]{1,15}$/.test(opts.hostname)) {
    throw new RestoreError(FailureType.InvalidRequest, `'${opts.hostname}' is not a valid Windows computer name`);
  }
  const usedMiB = opts.usedMiB ?? 16;
  const { partitions, ntfs } = layout(sizeBytes, opts.scheme);
  if (usedMiB * MiB > ntfs.sizeBytes * 0.8) {
    throw new RestoreError(FailureType.InvalidRequest, `usedMiB ${usedMiB} does not fit on a ${sizeBytes / MiB} MiB disk`);
  }

  // Scratch space beside the image: the partition image is as large (sparse) as the volume.
  const work = await fsp.mkdtemp(join(dirname(imagePath), '.winimg-'));
  try {
    const image = await fsp.open(imagePath, 'w');
    await image.truncate(sizeBytes);
    await image.close();
    await writePartitionTable(imagePath, { scheme: opts.scheme, partitions });

    const part = join(work, 'ntfs.img');
    const fh = await fsp.open(part, 'w');
    await fh.truncate(ntfs.sizeBytes);
    await fh.close();
    await run(
      'mkntfs',
      ['-F', '-Q', '-q', '-s', '512', '-c', '4096', '-p', String(ntfs.startBytes / 512), '-H', '255', '-S', '63', '-L', 'Windows', part],
      {
        timeoutMs: 120_000,
      },
    );

    const systemHive = join(work, 'SYSTEM');
    const softwareHive = join(work, 'SOFTWARE');
    await createHive(systemHive, demoSystemHive(opts.hostname), { rootName: 'ROOT', fileName: '\\SystemRoot\\System32\\Config\\SYSTEM' });
    await createHive(softwareHive, demoSoftwareHive(), { rootName: 'ROOT', fileName: '\\SystemRoot\\System32\\Config\\SOFTWARE' });

    await withNtfsMount(part, work, async (root) => {
      const dirs = [
        'Windows/System32/config',
        'Windows/System32/drivers',
        'Windows/Temp',
        'Program Files/VMware/VMware Tools',
        'Users/Public/Documents',
      ];
      for (const d of dirs) await fsp.mkdir(join(root, d), { recursive: true });
      await fsp.copyFile(systemHive, join(root, 'Windows/System32/config/SYSTEM'));
      await fsp.copyFile(softwareHive, join(root, 'Windows/System32/config/SOFTWARE'));
      for (const driver of ['storvsc.sys', 'vmbus.sys', 'partmgr.sys']) {
        await fsp.writeFile(join(root, 'Windows/System32/drivers', driver), `MZ vmrestore demo placeholder for ${driver}\r\n`);
      }
      await fsp.writeFile(join(root, 'Program Files/VMware/VMware Tools/vmtoolsd.exe'), 'MZ vmrestore demo placeholder\r\n');
      await writeUserFiles(join(root, 'Users/Public/Documents'), usedMiB * MiB, opts.seed ?? opts.hostname);
    });

    await embedPartition(imagePath, ntfs.startBytes, part);
    return { imagePath, ntfsPartitionOffset: ntfs.startBytes, ntfsPartitionSize: ntfs.sizeBytes };
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

/** Files of 64 KiB..4 MiB (sizes and bytes from the seed) until `total` bytes are written. */
async function writeUserFiles(dir: string, total: number, seed: string): Promise<void> {
  const next = seededStream(seed);
  let written = 0;
  for (let i = 1; written < total; i++) {
    const r = next(4).readUInt32LE(0);
    const size = Math.min(total - written, 64 * 1024 * (1 + (r % 64)));
    await fsp.writeFile(join(dir, `document-${String(i).padStart(4, '0')}.bin`), next(size));
    written += size;
  }
}
