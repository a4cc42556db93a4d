/**
 * Offline preparation of a Windows system disk for Azure, on a raw whole-disk image. Follows the
 * Azure Migrate/ASR hydration list: every ControlSet gets RDP allowed and its inbound firewall rules
 * enabled, SAN policy OnlineAll, DHCP automatic, the Hyper-V storage and VMBus drivers boot-start and
 * VMware Tools disabled; the configured Azure VM agent installer is staged on the volume with a RunOnce
 * entry that installs it (without one, nothing is staged and a warning says so). Every change is returned with its before/after value, and a second run changes
 * nothing (and returns []).
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants, promises as fsp } from 'node:fs';
import { dirname, join } from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { NoPartitionTableError, readPartitionTable } from '../disk/partition';
import { PartitionCopy, hasNtfsBootSector, ntfsListDir, ntfsReadFile, ntfsResolvePath, ntfsWriteFile, withNtfsMount } from './ntfs';
import {
  HiveReader,
  decodeValue,
  encodeValue,
  getHiveValue,
  hiveValueText,
  setHiveValues,
  type HiveEdit,
  type HiveValueData,
} from './regf';
import { guestChange, type GuestChange, type GuestPreparationResult } from '../types';
import { RDP_RULE_TCP, RDP_RULE_UDP, remoteDesktopRule } from './firewall';

export type WindowsHive = 'SYSTEM' | 'SOFTWARE';

export interface PrepareWindowsOptions {
  /**
   * Local path of WindowsAzureVmAgent.msi, staged with a RunOnce entry that installs it. Without it nothing
   * is staged for the agent and the result carries a warning: the VM comes up without the agent.
   */
  agentInstallerPath?: string;
  /** Scratch directory for the partition copy (sparse, as large as the volume). Default: beside the image. */
  workDir?: string;
}

const CONFIG_DIR = 'Windows/System32/config';
const DRIVERS_DIR = 'Windows/System32/drivers';
const AGENT_DIR = 'Windows/AzureAgent';
const AGENT_FILE = 'WindowsAzureVmAgent.msi';
const RUNONCE_KEY = 'Microsoft\\Windows\\CurrentVersion\\RunOnce';
const RUNONCE_VALUE = 'AzureVmAgent';
const FIREWALL_RULES = 'Services\\SharedAccess\\Parameters\\FirewallPolicy\\FirewallRules';

const SERVICE_START = { boot: 0, system: 1, auto: 2, manual: 3, disabled: 4 } as const;

/** Where the Windows volume sits on the disk and a working copy of it. */
interface WindowsVolume {
  startBytes: number;
  sizeBytes: number;
  copy: PartitionCopy;
  /** Stored spelling of the config directory (`/Windows/System32/config`). */
  configDir: string;
}

async function withWorkDir<T>(imagePath: string, workDir: string | undefined, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await fsp.mkdtemp(join(workDir ?? dirname(imagePath), '.winprep-'));
  try {
    return await fn(dir);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

/**
 * Finds the NTFS volume holding Windows\System32\config\SYSTEM, as hydration does by trying each
 * partition. Smaller partitions are tried first, so a System Reserved or recovery volume that is
 * ruled out costs little to copy.
 */
async function locateWindowsVolume(imagePath: string, dir: string): Promise<WindowsVolume> {
  let ranges: { startBytes: number; sizeBytes: number }[];
  try {
    ranges = (await readPartitionTable(imagePath)).partitions;
  } catch (e) {
    if (!(e instanceof NoPartitionTableError)) throw e;
    // A bare NTFS volume without a partition table.
    ranges = [{ startBytes: 0, sizeBytes: (await fsp.stat(imagePath)).size }];
  }
  const candidates: typeof ranges = [];
  for (const r of ranges) if (await hasNtfsBootSector(imagePath, r.startBytes)) candidates.push(r);
  candidates.sort((a, b) => a.sizeBytes - b.sizeBytes);
  for (const [i, r] of candidates.entries()) {
    const partPath = join(dir, `volume-${i}.img`);
    const copy = await PartitionCopy.extract(imagePath, r.startBytes, r.sizeBytes, partPath);
    const configDir = await ntfsResolvePath(partPath, CONFIG_DIR);
    if (configDir && (await ntfsListDir(partPath, configDir))?.some((n) => n.toUpperCase() === 'SYSTEM')) {
      return { startBytes: r.startBytes, sizeBytes: r.sizeBytes, copy, configDir };
    }
    await fsp.rm(partPath, { force: true });
  }
  throw new RestoreError(
    FailureType.GuestPreparation,
    `${imagePath}: no NTFS partition holds \\Windows\\System32\\config\\SYSTEM (found ${candidates.length} NTFS volume(s))`,
  );
}

/** Copies a hive out of the volume into dir; returns its local path and its stored path. */
async function extractHive(vol: WindowsVolume, hive: WindowsHive, dir: string): Promise<{ local: string; stored: string }> {
  const names = (await ntfsListDir(vol.copy.partPath, vol.configDir)) ?? [];
  const name = names.find((n) => n.toUpperCase() === hive);
  if (!name) throw new RestoreError(FailureType.GuestPreparation, `the Windows volume has no ${hive} hive`);
  const stored = `${vol.configDir}/${name}`;
  const data = await ntfsReadFile(vol.copy.partPath, stored);
  if (!data) throw new RestoreError(FailureType.GuestPreparation, `could not read ${stored} from the Windows volume`);
  const local = join(dir, hive);
  await fsp.writeFile(local, data);
  return { local, stored };
}

interface PlannedEdit extends HiveEdit {
  change: GuestChange;
}

function regPath(hive: WindowsHive, keyPath: string, name: string): string {
  return `HKLM\\${hive}\\${keyPath}\\${name}`;
}

function sameValue(a: HiveValueData | null, b: HiveValueData): boolean {
  return a !== null && a.type === b.type && hiveValueText(a) === hiveValueText(b);
}

/** Plans `value` for keyPath\name unless it is already there. */
function plan(
  out: PlannedEdit[],
  reader: HiveReader,
  hive: WindowsHive,
  keyPath: string,
  name: string,
  value: HiveValueData,
  description: string,
): void {
  const raw = reader.value(keyPath, name);
  const current = raw ? decodeValue(raw.regType, raw.data) : null;
  if (sameValue(current, value)) return;
  out.push({
    keyPath,
    name: raw?.name ?? name,
    value,
    change: guestChange({
      path: regPath(hive, keyPath, raw?.name ?? name),
      action: 'set-value',
      description,
      before: raw ? raw.data : null,
      after: encodeValue(value).data,
      diffBefore: current ? hiveValueText(current) : null,
      diffAfter: hiveValueText(value),
    }),
  });
}

function controlSets(reader: HiveReader): string[] {
  const sets = (reader.subkeys('') ?? []).filter((k) => /^ControlSet\d{3}$/i.test(k)).sort();
  if (sets.length === 0) throw new RestoreError(FailureType.GuestPreparation, 'the SYSTEM hive has no ControlSetNNN key');
  return sets;
}

function currentControlSet(reader: HiveReader): string | null {
  const v = reader.value('Select', 'Current');
  if (!v || v.data.length < 4) return null;
  return `ControlSet${String(v.data.readUInt32LE(0)).padStart(3, '0')}`;
}

function planSystem(reader: HiveReader, driverFiles: Set<string>): PlannedEdit[] {
  const edits: PlannedEdit[] = [];
  const sets = controlSets(reader);
  const current = currentControlSet(reader)?.toUpperCase() ?? sets[0]!.toUpperCase();
  const dword = (value: number): HiveValueData => ({ type: 'dword', value });

  for (const cs of sets) {
    const isCurrent = cs.toUpperCase() === current;
    const svc = (name: string) => `${cs}\\Services\\${name}`;
    /** Boot-critical services must exist in the ControlSet Windows boots from; stale sets are patched where they can be. */
    const requireService = (name: string, why: string): boolean => {
      if (reader.keyExists(svc(name))) return true;
      if (!isCurrent) return false;
      throw new RestoreError(FailureType.GuestPreparation, `service ${name} is missing from ${cs} (current): ${why}`);
    };

    plan(edits, reader, 'SYSTEM', `${cs}\\Control\\Terminal Server`, 'fDenyTSConnections', dword(0), 'Allow Remote Desktop connections');

    const rulesKey = `${cs}\\${FIREWALL_RULES}`;
    for (const rule of [RDP_RULE_TCP, RDP_RULE_UDP]) {
      const raw = reader.value(rulesKey, rule);
      const ruleValue = raw ? decodeValue(raw.regType, raw.data) : null;
      const proto = rule === RDP_RULE_TCP ? 'TCP' : 'UDP';
      const description = `Enable the inbound Remote Desktop firewall rule (${proto} 3389)`;
      if (ruleValue === null) {
        plan(
          edits,
          reader,
          'SYSTEM',
          rulesKey,
          rule,
          { type: 'string', value: remoteDesktopRule(rule, true)! },
          `${description}; the rule was missing and is added`,
        );
      } else if (ruleValue.type === 'string' && /\|Active=FALSE\|/i.test(ruleValue.value)) {
        const enabled = ruleValue.value.replace(/\|Active=FALSE\|/i, '|Active=TRUE|');
        plan(edits, reader, 'SYSTEM', rulesKey, rule, { type: 'string', value: enabled }, description);
      }
    }

    if (reader.keyExists(svc('partmgr'))) {
      plan(
        edits,
        reader,
        'SYSTEM',
        `${svc('partmgr')}\\Parameters`,
        'SanPolicy',
        dword(1),
        'SAN policy OnlineAll, so data disks come online with their drive letters (the Azure temporary disk takes D:)',
      );
    }

    if (requireService('Dhcp', 'Azure assigns the NIC address through DHCP')) {
      plan(
        edits,
        reader,
        'SYSTEM',
        svc('Dhcp'),
        'Start',
        dword(SERVICE_START.auto),
        'DHCP client starts automatically (Azure assigns addresses by DHCP)',
      );
    }
    for (const [driver, what] of [
      ['storvsc', 'Hyper-V storage driver (Azure disks are attached through it)'],
      ['vmbus', 'Hyper-V VMBus driver'],
    ] as const) {
      if (!requireService(driver, `the ${what} is needed to boot on Azure`)) continue;
      if (isCurrent && !driverFiles.has(`${driver}.sys`.toUpperCase())) {
        throw new RestoreError(
          FailureType.GuestPreparation,
          `${driver}.sys is missing from \\Windows\\System32\\drivers: the ${what} is needed to boot on Azure`,
        );
      }
      plan(edits, reader, 'SYSTEM', svc(driver), 'Start', dword(SERVICE_START.boot), `${what} starts at boot`);
    }
    if (reader.keyExists(svc('VMTools'))) {
      plan(
        edits,
        reader,
        'SYSTEM',
        svc('VMTools'),
        'Start',
        dword(SERVICE_START.disabled),
        'VMware Tools service disabled (no VMware hypervisor on Azure)',
      );
    }
  }
  return edits;
}

function systemRootOf(software: HiveReader): string {
  const raw = software.value('Microsoft\\Windows NT\\CurrentVersion', 'SystemRoot');
  const v = raw ? decodeValue(raw.regType, raw.data) : null;
  if (v && (v.type === 'string' || v.type === 'expandString') && /^[A-Za-z]:\\/.test(v.value)) return v.value.replace(/\\+$/, '');
  return 'C:\\Windows';
}

export function agentInstallCommand(systemRoot: string): string {
  return `msiexec.exe /i "${systemRoot}\\AzureAgent\\${AGENT_FILE}" /quiet /norestart`;
}

/** The warning a preparation without an installer returns (the restore then does not claim the agent). */
export const NO_AGENT_INSTALLER_WARNING =
  'no Azure VM agent installer configured (azure.windowsAgentInstaller); the agent is not installed';

/** Stages the agent installer in \Windows\AzureAgent; returns the change or null when it is already there. */
async function stageAgent(vol: WindowsVolume, dir: string, systemRoot: string, installer: string): Promise<GuestChange | null> {
  const content = await fsp.readFile(installer);
  const part = vol.copy.partPath;
  const agentDir = await ntfsResolvePath(part, AGENT_DIR);
  const existingName = agentDir
    ? (await ntfsListDir(part, agentDir))?.find((n) => n.toUpperCase() === AGENT_FILE.toUpperCase())
    : undefined;
  const existing = agentDir && existingName ? await ntfsReadFile(part, `${agentDir}/${existingName}`) : null;
  if (existing && existing.equals(content)) return null;

  const local = join(dir, AGENT_FILE);
  await fsp.writeFile(local, content);
  if (agentDir) {
    await ntfsWriteFile(part, local, `${agentDir}/${existingName ?? AGENT_FILE}`);
  } else {
    // ntfscp cannot create directories; ntfs-3g's FUSE mount can.
    const windowsDir = await ntfsResolvePath(part, 'Windows');
    if (!windowsDir) throw new RestoreError(FailureType.GuestPreparation, 'the Windows volume has no \\Windows directory');
    await withNtfsMount(part, dir, async (root) => {
      // Through the mount a guest reparse point would be a host symlink: only a real directory is used,
      // and nothing existing is followed or overwritten.
      const windows = join(root, windowsDir);
      if (!(await fsp.lstat(windows)).isDirectory()) {
        throw new RestoreError(
          FailureType.GuestPreparation,
          "the Windows volume's \\Windows is not a plain directory (a reparse point?); refused",
        );
      }
      const target = join(windows, 'AzureAgent');
      await fsp.mkdir(target);
      await fsp.copyFile(local, join(target, AGENT_FILE), fsConstants.COPYFILE_EXCL);
    });
  }
  return guestChange({
    path: `${systemRoot}\\AzureAgent\\${AGENT_FILE}`,
    action: existing ? 'edit' : 'create',
    before: existing,
    after: content,
    description: `Stage the Azure VM agent installer (${content.length} bytes, sha256 ${createHash('sha256').update(content).digest('hex')}; installed by the RunOnce entry)`,
  });
}

/**
 * Prepares the Windows installation on a whole-disk image for Azure and returns what changed.
 * The image is edited in place; only changed 4 KiB blocks are written.
 */
export async function prepareWindowsDisk(imagePath: string, opts: PrepareWindowsOptions = {}): Promise<GuestChange[]> {
  return (await prepareWindowsDiskDetailed(imagePath, opts)).changes;
}

/** prepareWindowsDisk with the warnings (things it could not do, such as staging the agent without an installer). */
export async function prepareWindowsDiskDetailed(imagePath: string, opts: PrepareWindowsOptions = {}): Promise<GuestPreparationResult> {
  if (opts.agentInstallerPath) {
    await fsp.access(opts.agentInstallerPath).catch(() => {
      throw new RestoreError(FailureType.InvalidRequest, `agent installer ${opts.agentInstallerPath} is not readable`);
    });
  }
  return withWorkDir(imagePath, opts.workDir, async (dir) => {
    const vol = await locateWindowsVolume(imagePath, dir);
    const part = vol.copy.partPath;
    const changes: GuestChange[] = [];
    const warnings: string[] = [];

    const driversDir = await ntfsResolvePath(part, DRIVERS_DIR);
    const driverFiles = new Set(((driversDir && (await ntfsListDir(part, driversDir))) || []).map((n) => n.toUpperCase()));

    const system = await extractHive(vol, 'SYSTEM', dir);
    const systemEdits = planSystem(await HiveReader.open(system.local), driverFiles);
    if (await setHiveValues(system.local, systemEdits)) {
      await ntfsWriteFile(part, system.local, system.stored);
      changes.push(...systemEdits.map((e) => e.change));
    }

    if (opts.agentInstallerPath) {
      const software = await extractHive(vol, 'SOFTWARE', dir);
      const softwareReader = await HiveReader.open(software.local);
      const systemRoot = systemRootOf(softwareReader);
      // The file first: a RunOnce entry never points at an installer that is not on the volume.
      const agent = await stageAgent(vol, dir, systemRoot, opts.agentInstallerPath);
      if (agent) changes.push(agent);
      const softwareEdits: PlannedEdit[] = [];
      plan(
        softwareEdits,
        softwareReader,
        'SOFTWARE',
        RUNONCE_KEY,
        RUNONCE_VALUE,
        { type: 'string', value: agentInstallCommand(systemRoot) },
        'Install the staged Azure VM agent at the first administrator logon',
      );
      if (await setHiveValues(software.local, softwareEdits)) {
        await ntfsWriteFile(part, software.local, software.stored);
        changes.push(...softwareEdits.map((e) => e.change));
      }
    } else {
      warnings.push(NO_AGENT_INSTALLER_WARNING);
    }

    if (changes.length > 0) await vol.copy.writeBack();
    return { changes, warnings };
  });
}

export interface HiveValueQuery {
  hive: WindowsHive;
  keyPath: string;
  valueName: string;
}

/**
 * Reads registry values from the Windows volume of a disk image (ntfscat + hivexget) as text: dwords in
 * decimal, strings as stored; null when the key or value is missing.
 */
export async function readHiveValuesFromDisk(imagePath: string, queries: HiveValueQuery[], workDir?: string): Promise<(string | null)[]> {
  return withWorkDir(imagePath, workDir, async (dir) => {
    const vol = await locateWindowsVolume(imagePath, dir);
    const hives = new Map<WindowsHive, string>();
    const out: (string | null)[] = [];
    for (const q of queries) {
      let local = hives.get(q.hive);
      if (!local) {
        local = (await extractHive(vol, q.hive, dir)).local;
        hives.set(q.hive, local);
      }
      const v = await getHiveValue(local, q.keyPath, q.valueName);
      out.push(v ? hiveValueText(v) : null);
    }
    return out;
  });
}

export async function readHiveValueFromDisk(
  imagePath: string,
  hive: WindowsHive,
  keyPath: string,
  valueName: string,
): Promise<string | null> {
  return (await readHiveValuesFromDisk(imagePath, [{ hive, keyPath, valueName }]))[0]!;
}

/** Reads a file from the Windows volume of a disk image, or null when it is missing. */
export async function readWindowsFileFromDisk(imagePath: string, path: string, workDir?: string): Promise<Buffer | null> {
  return withWorkDir(imagePath, workDir, async (dir) => {
    const vol = await locateWindowsVolume(imagePath, dir);
    const stored = await ntfsResolvePath(vol.copy.partPath, path);
    return stored ? ntfsReadFile(vol.copy.partPath, stored) : null;
  });
}

/** What a disk carries for the Azure VM agent: the staged installer and the RunOnce entry that installs it. */
export interface AgentStaging {
  /** SHA-256 of \Windows\AzureAgent\WindowsAzureVmAgent.msi, or null when the file is missing. */
  installerSha256: string | null;
  installerBytes: number | null;
  /** The RunOnce value as stored, or null when it is missing. */
  runOnce: string | null;
  /** Both are there and RunOnce runs the staged file. */
  staged: boolean;
}

/** Reads the agent staging back from the Windows volume of a whole-disk image (ntfs-3g tools and hivex). */
export async function readAgentStaging(imagePath: string, workDir?: string): Promise<AgentStaging> {
  return withWorkDir(imagePath, workDir, async (dir) => {
    const vol = await locateWindowsVolume(imagePath, dir);
    const part = vol.copy.partPath;
    const stored = await ntfsResolvePath(part, `${AGENT_DIR}/${AGENT_FILE}`);
    const installer = stored ? await ntfsReadFile(part, stored) : null;
    const software = await extractHive(vol, 'SOFTWARE', dir);
    const reader = await HiveReader.open(software.local);
    const raw = reader.value(RUNONCE_KEY, RUNONCE_VALUE);
    const value = raw ? decodeValue(raw.regType, raw.data) : null;
    const runOnce = value ? hiveValueText(value) : null;
    const expected = agentInstallCommand(systemRootOf(reader));
    return {
      installerSha256: installer ? createHash('sha256').update(installer).digest('hex') : null,
      installerBytes: installer ? installer.length : null,
      runOnce,
      staged: installer !== null && installer.length > 0 && runOnce !== null && runOnce.toLowerCase() === expected.toLowerCase(),
    };
  });
}
