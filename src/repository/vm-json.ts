import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import type { DiskProvisioning, Firmware, GuestOsFamily, VmConfig, VmNic } from '../domain/vm';
import { SECTOR_SIZE } from './format';
import { DISK_IMAGE_FORMATS, detectDiskImageFormat, probeDiskImage, type DiskImageFormat } from './formats';
import { isErrno } from './files';

/** A VM to import: its config plus the absolute path and detected format of each disk's image, by disk index. */
export interface VmImportSource {
  vm: VmConfig;
  diskImagePaths: string[];
  diskFormats: DiskImageFormat[];
}

const TOP_KEYS = ['name', 'guestOs', 'firmware', 'cpus', 'memoryMiB', 'nics', 'disks'];
const NIC_KEYS = ['network', 'macAddress'];
const DISK_KEYS = ['path', 'provisioning', 'label', 'format'];
const GUEST_OS: GuestOsFamily[] = ['linux', 'windows'];
const FIRMWARE: Firmware[] = ['bios', 'efi'];
const PROVISIONING: DiskProvisioning[] = ['thin', 'thick'];
const MAX_VM_NAME = 80;
const MAX_CPUS = 768;
const MAX_MEMORY_MIB = 24 * 1024 * 1024;
const MAC_ADDRESS = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const show = (v: unknown): string => (typeof v === 'string' ? `'${v}'` : (JSON.stringify(v) ?? String(v)));

/**
 * Reads and checks a vm.json. Every problem found is reported at once, each naming its key and the
 * value found, so one edit fixes them all.
 */
export async function readVmJson(vmJsonPath: string): Promise<VmImportSource> {
  const file = path.resolve(vmJsonPath);
  const label = path.basename(file);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    const reason = isErrno(err, 'ENOENT') ? 'not found' : (err as Error).message;
    throw new RestoreError(FailureType.InvalidRequest, `${label}: cannot read ${file}: ${reason}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new RestoreError(FailureType.InvalidRequest, `${label}: ${file} is not valid JSON: ${(err as Error).message}`);
  }

  const problems: string[] = [];
  const problem = (key: string, what: string): void => void problems.push(`${key} ${what}`);
  const unknownKeys = (obj: Record<string, unknown>, known: string[], where: string): void => {
    for (const key of Object.keys(obj)) {
      if (!known.includes(key)) problem(`${where}${key}`, `is not a known key (known: ${known.join(', ')})`);
    }
  };
  const oneOf = <T extends string>(value: unknown, allowed: readonly T[], key: string): T | undefined => {
    if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) return value as T;
    problem(key, `${show(value)} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}`);
    return undefined;
  };
  const intInRange = (value: unknown, min: number, max: number, key: string): number => {
    if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max) {
      problem(key, `${show(value)} must be an integer from ${min} to ${max}`);
    }
    return value as number;
  };
  const nonEmptyString = (value: unknown, key: string, max = 1024): string => {
    if (typeof value !== 'string' || value.trim() === '') problem(key, `${show(value)} must be a non-empty string`);
    else if (value.length > max) problem(key, `is ${value.length} characters; at most ${max} are allowed`);
    // eslint-disable-next-line no-control-regex
    else if (/[\u0000-\u001f\u007f]/.test(value)) problem(key, `${show(value)} contains control characters`);
    return value as string;
  };

  if (!isRecord(raw)) throw new RestoreError(FailureType.InvalidRequest, `${label}: ${file} must hold a JSON object`);
  unknownKeys(raw, TOP_KEYS, '');

  const name = nonEmptyString(raw.name, 'name', MAX_VM_NAME);
  const guestOs = oneOf(raw.guestOs, GUEST_OS, 'guestOs');
  const firmware = oneOf(raw.firmware, FIRMWARE, 'firmware');
  const cpus = intInRange(raw.cpus, 1, MAX_CPUS, 'cpus');
  const memoryMiB = intInRange(raw.memoryMiB, 4, MAX_MEMORY_MIB, 'memoryMiB');

  const nics: VmNic[] = [];
  if (!Array.isArray(raw.nics)) {
    problem('nics', `${show(raw.nics)} must be an array (may be empty)`);
  } else {
    raw.nics.forEach((nic: unknown, i: number) => {
      const where = `nics[${i}]`;
      if (!isRecord(nic)) return problem(where, `${show(nic)} must be an object with 'network'`);
      unknownKeys(nic, NIC_KEYS, `${where}.`);
      const network = nonEmptyString(nic.network, `${where}.network`, 255);
      const mac = nic.macAddress;
      if (mac === undefined) return void nics.push({ network });
      if (typeof mac !== 'string' || !MAC_ADDRESS.test(mac)) {
        return problem(`${where}.macAddress`, `${show(mac)} must look like 00:50:56:aa:bb:cc`);
      }
      nics.push({ network, macAddress: mac.toLowerCase() });
    });
  }

  const disks: { path: string; provisioning: DiskProvisioning; label: string; format?: DiskImageFormat }[] = [];
  if (!Array.isArray(raw.disks) || raw.disks.length === 0) {
    problem('disks', `${show(raw.disks)} must be a non-empty array`);
  } else {
    raw.disks.forEach((disk: unknown, i: number) => {
      const where = `disks[${i}]`;
      if (!isRecord(disk)) return problem(where, `${show(disk)} must be an object with 'path' and 'provisioning'`);
      unknownKeys(disk, DISK_KEYS, `${where}.`);
      const diskPath = nonEmptyString(disk.path, `${where}.path`);
      const provisioning = oneOf(disk.provisioning, PROVISIONING, `${where}.provisioning`);
      if (disk.label !== undefined) nonEmptyString(disk.label, `${where}.label`, 255);
      const format = disk.format === undefined ? undefined : oneOf(disk.format, DISK_IMAGE_FORMATS, `${where}.format`);
      disks.push({
        path: diskPath,
        provisioning: provisioning ?? 'thin',
        label: typeof disk.label === 'string' ? disk.label : `Hard disk ${i + 1}`,
        format,
      });
    });
  }

  const baseDir = path.dirname(file);
  const diskImagePaths = disks.map((disk) =>
    typeof disk.path === 'string' && disk.path.trim() !== '' ? path.resolve(baseDir, disk.path) : '',
  );
  const imageChecks = await Promise.all(
    disks.map(
      (disk, i): Promise<DiskImageCheck> =>
        diskImagePaths[i] === '' ? Promise.resolve({ size: 0, format: 'raw' }) : checkDiskImage(disk.path, diskImagePaths[i], disk.format),
    ),
  );
  // Reported in disk order, after the checks that ran concurrently have all finished.
  imageChecks.forEach((check, i) => check.problem && problem(`disks[${i}].path`, check.problem));

  if (problems.length > 0) {
    throw new RestoreError(FailureType.InvalidRequest, `${label}: ${problems.join('; ')}`);
  }
  return {
    vm: {
      name: name.trim(),
      guestOs: guestOs!,
      firmware: firmware!,
      cpus,
      memoryMiB,
      nics,
      disks: disks.map((disk, index) => ({
        index,
        label: disk.label,
        capacityBytes: imageChecks[index].size,
        provisioning: disk.provisioning,
      })),
    },
    diskImagePaths,
    diskFormats: imageChecks.map((check) => check.format),
  };
}

interface DiskImageCheck {
  size: number;
  format: DiskImageFormat;
  problem?: string;
}

/** Virtual size and format of an image (detected from the file; must match `format` if given), or why it cannot be imported. */
async function checkDiskImage(given: string, resolved: string, format: DiskImageFormat | undefined): Promise<DiskImageCheck> {
  const fail = (what: string): DiskImageCheck => ({
    size: 0,
    format: 'raw',
    problem: `${show(given)} ${what} (resolved to ${resolved})`,
  });
  try {
    const stat = await fs.stat(resolved);
    if (!stat.isFile()) return fail('is not a regular file');
    if (stat.size === 0) return fail('is empty');
    if (stat.size % SECTOR_SIZE !== 0 && (await detectDiskImageFormat(resolved)) === 'raw') {
      return fail(`size ${stat.size} bytes is not a multiple of ${SECTOR_SIZE}`);
    }
    const probe = await probeDiskImage(resolved, { expectedFormat: format });
    return { size: probe.capacityBytes, format: probe.format };
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return fail('not found');
    return fail(err instanceof RestoreError ? `cannot be imported: ${err.message}` : `cannot be read: ${(err as Error).message}`);
  }
}
