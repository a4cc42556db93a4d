import { createHash } from 'node:crypto';
import { FailureType, RestoreError } from '../../domain/errors';
import { createHive, HiveReader, RegType, type HiveKeySpec, type HiveValueData } from './regf';

/**
 * A BIOS Boot Configuration Data store (`\Boot\BCD`): a registry hive whose root holds `Description`
 * and `Objects\{guid}\Elements\{type}` keys, each element in a value named `Element`. Layout and
 * element encodings as publicly described for the BCD WMI provider (BcdObject/BcdElement types) and
 * in Geoff Chappell's notes on BCD elements: strings are REG_SZ, object references REG_SZ GUIDs,
 * object lists REG_MULTI_SZ, integers 8-byte REG_BINARY, devices REG_BINARY device records.
 *
 * The store holds what a BIOS boot of one Windows installation needs: the Windows Boot Manager
 * ({bootmgr}) and one Windows Boot Loader entry for `\Windows\system32\winload.exe`, both on the MBR
 * partition given by disk signature and partition offset.
 */

export const BOOTMGR_GUID = '{9dea862c-5cdd-4e70-acc1-f32b344d4795}';

export const BcdObjectType = {
  /** Firmware-independent boot manager application. */
  bootManager: 0x10100002,
  /** Windows Boot Loader (an OS loader application). */
  osLoader: 0x10200003,
} as const;

export const BcdElement = {
  /** BcdLibraryDevice_ApplicationDevice */
  device: 0x11000001,
  /** BcdLibraryString_ApplicationPath */
  path: 0x12000002,
  /** BcdLibraryString_Description */
  description: 0x12000004,
  /** BcdLibraryString_PreferredLocale */
  locale: 0x12000005,
  /** BcdOSLoaderDevice_OSDevice */
  osDevice: 0x21000001,
  /** BcdOSLoaderString_SystemRoot */
  systemRoot: 0x22000002,
  /** BcdBootMgrObject_DefaultObject */
  defaultObject: 0x23000003,
  /** BcdBootMgrObjectList_DisplayOrder */
  displayOrder: 0x24000001,
  /** BcdBootMgrInteger_Timeout (seconds) */
  timeout: 0x25000004,
} as const;

/** Boot library device types in a device record. */
const DEVICE_PARTITION = 6;
/** Partition styles in a device record's disk part. */
const PARTITION_STYLE_MBR = 1;
const DEVICE_RECORD_BYTES = 0x48;

/**
 * The device record of an MBR partition: a zero options GUID, then the device (type 6 "partition",
 * flags, size 0x48, reserved), the partition's byte offset in a 16-byte field, and the disk (local
 * hard disk, MBR style, disk signature), padded to the record size.
 */
export function mbrPartitionDevice(diskSignature: number, partitionOffsetBytes: number): Buffer {
  const b = Buffer.alloc(16 + DEVICE_RECORD_BYTES);
  b.writeUInt32LE(DEVICE_PARTITION, 0x10);
  b.writeUInt32LE(0, 0x14);
  b.writeUInt32LE(DEVICE_RECORD_BYTES, 0x18);
  b.writeBigUInt64LE(BigInt(partitionOffsetBytes), 0x20);
  b.writeUInt32LE(0, 0x30); // local hard disk
  b.writeUInt32LE(PARTITION_STYLE_MBR, 0x34);
  b.writeUInt32LE(diskSignature >>> 0, 0x38);
  return b;
}

export interface MbrPartitionDevice {
  diskSignature: number;
  partitionOffsetBytes: number;
}

/** Reads a device record written by mbrPartitionDevice (or bcdedit for an MBR partition); null otherwise. */
export function parseMbrPartitionDevice(b: Buffer): MbrPartitionDevice | null {
  if (b.length < 16 + DEVICE_RECORD_BYTES) return null;
  if (b.readUInt32LE(0x10) !== DEVICE_PARTITION || b.readUInt32LE(0x34) !== PARTITION_STYLE_MBR) return null;
  return { diskSignature: b.readUInt32LE(0x38), partitionOffsetBytes: Number(b.readBigUInt64LE(0x20)) };
}

function integer(n: number): HiveValueData {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return { type: 'binary', value: b };
}

function elementKey(type: number): string {
  return type.toString(16).padStart(8, '0');
}

const GUID_RE = /^\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}$/;
const TEXT_RE = /^[A-Za-z0-9 ._()-]{1,100}$/;
const PATH_RE = /^(\\[A-Za-z0-9._-]+)+$/;
const LOCALE_RE = /^[a-z]{2,3}-[A-Z]{2}$/;

/** A GUID for the loader entry derived from the disk, so the same disk always gets the same store. */
export function loaderGuidFor(diskSignature: number, partitionOffsetBytes: number): string {
  const h = createHash('sha256').update(`vmrestore-bcd-loader:${diskSignature}:${partitionOffsetBytes}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x40;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `{${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}}`;
}

export interface BiosBcdSpec {
  diskSignature: number;
  /** Byte offset of the partition holding bootmgr and Windows (one partition for both here). */
  partitionOffsetBytes: number;
  loaderGuid: string;
  /** Shown in the boot menu, e.g. `Windows Server 2022 Datacenter`. */
  description: string;
  /** `\Windows` */
  systemRoot: string;
  locale: string;
  timeoutSeconds: number;
}

function checkSpec(spec: BiosBcdSpec): void {
  const bad = (what: string, v: unknown) => {
    throw new RestoreError(FailureType.GuestPreparation, `BCD ${what} ${JSON.stringify(v)} is not allowed in a boot store written here`);
  };
  if (!GUID_RE.test(spec.loaderGuid)) bad('loader GUID', spec.loaderGuid);
  if (!TEXT_RE.test(spec.description)) bad('description', spec.description);
  if (!PATH_RE.test(spec.systemRoot)) bad('system root', spec.systemRoot);
  if (!LOCALE_RE.test(spec.locale)) bad('locale', spec.locale);
  if (!Number.isInteger(spec.timeoutSeconds) || spec.timeoutSeconds < 0 || spec.timeoutSeconds > 999) bad('timeout', spec.timeoutSeconds);
  if (!Number.isSafeInteger(spec.partitionOffsetBytes) || spec.partitionOffsetBytes <= 0 || spec.partitionOffsetBytes % 512 !== 0) {
    bad('partition offset', spec.partitionOffsetBytes);
  }
}

/** The keys of the store: Description, {bootmgr} and the Windows Boot Loader entry. */
export function biosBcdKeys(spec: BiosBcdSpec): HiveKeySpec[] {
  checkSpec(spec);
  const device: HiveValueData = { type: 'binary', value: mbrPartitionDevice(spec.diskSignature, spec.partitionOffsetBytes) };
  const str = (value: string): HiveValueData => ({ type: 'string', value });
  const object = (guid: string, type: number, elements: [number, HiveValueData][]): HiveKeySpec[] => [
    { path: `Objects\\${guid}\\Description`, values: { Type: { type: 'dword', value: type } } },
    ...elements.map(([t, v]) => ({ path: `Objects\\${guid}\\Elements\\${elementKey(t)}`, values: { Element: v } })),
  ];
  return [
    {
      path: 'Description',
      values: { KeyName: str('BCD00000000'), System: { type: 'dword', value: 1 }, TreatAsSystem: { type: 'dword', value: 1 } },
    },
    ...object(BOOTMGR_GUID, BcdObjectType.bootManager, [
      [BcdElement.device, device],
      [BcdElement.description, str('Windows Boot Manager')],
      [BcdElement.locale, str(spec.locale)],
      [BcdElement.defaultObject, str(spec.loaderGuid)],
      [BcdElement.displayOrder, { type: 'multiString', value: [spec.loaderGuid] }],
      [BcdElement.timeout, integer(spec.timeoutSeconds)],
    ]),
    ...object(spec.loaderGuid, BcdObjectType.osLoader, [
      [BcdElement.device, device],
      [BcdElement.path, str('\\Windows\\system32\\winload.exe')],
      [BcdElement.description, str(spec.description)],
      [BcdElement.locale, str(spec.locale)],
      [BcdElement.osDevice, device],
      [BcdElement.systemRoot, str(spec.systemRoot)],
    ]),
  ];
}

/** Writes a new BIOS BCD hive file (hivexsh through the project's regf helpers). */
export async function writeBiosBcd(path: string, spec: BiosBcdSpec): Promise<void> {
  await createHive(path, biosBcdKeys(spec), { rootName: 'NewStoreRoot', fileName: '\\Boot\\BCD' });
}

export interface BcdObjectView {
  guid: string;
  type: number | null;
  /** Element type (8 hex digits) → raw type and data. */
  elements: Map<string, { regType: number; data: Buffer }>;
}

/** Reads every object of a BCD hive with the project's hive parser (for checks and reports). */
export async function readBcdObjects(path: string): Promise<BcdObjectView[]> {
  const r = await HiveReader.open(path);
  const out: BcdObjectView[] = [];
  for (const guid of r.subkeys('Objects') ?? []) {
    const t = r.value(`Objects\\${guid}\\Description`, 'Type');
    const elements = new Map<string, { regType: number; data: Buffer }>();
    for (const e of r.subkeys(`Objects\\${guid}\\Elements`) ?? []) {
      const v = r.value(`Objects\\${guid}\\Elements\\${e}`, 'Element');
      if (v) elements.set(e.toLowerCase(), { regType: v.regType, data: v.data });
    }
    out.push({ guid: guid.toLowerCase(), type: t && t.regType === RegType.Dword ? t.data.readUInt32LE(0) : null, elements });
  }
  return out;
}

export { elementKey as bcdElementKey };
