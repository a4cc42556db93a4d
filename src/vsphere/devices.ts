import { FailureType, RestoreError } from '../domain/errors';
import { bool, num, obj, refArg, str, typedArg, type MoRef, type VimObject } from './soap';

/** What a NIC backing needs: a standard port group, or a distributed one with its switch. */
export type NetworkInfo =
  | { kind: 'Network'; ref: MoRef; name: string }
  | { kind: 'DistributedVirtualPortgroup'; ref: MoRef; name: string; portgroupKey: string; switchUuid: string };

export interface VmDiskInfo {
  key: number;
  label: string;
  capacityBytes: number;
  /** Descriptor path, e.g. '[LocalDS_0] web01/web01.vmdk'. */
  fileName: string;
  thinProvisioned: boolean;
  eagerlyScrub: boolean;
  diskMode: string;
  controllerKey: number;
  unitNumber: number;
  /** backing.uuid, e.g. '6000C29A-…': the disk's SCSI identity inside a guest with disk.EnableUUID. */
  uuid: string;
}

export interface VmNicInfo {
  key: number;
  label: string;
  /** Device type, e.g. 'VirtualVmxnet3'. */
  type: string;
  /** Port group name. */
  network: string;
  macAddress: string;
}

export const SCSI_CONTROLLER_TYPES = new Set([
  'ParaVirtualSCSIController',
  'VirtualLsiLogicController',
  'VirtualLsiLogicSASController',
  'VirtualBusLogicController',
]);

const ETHERNET_TYPES = new Set([
  'VirtualVmxnet3',
  'VirtualVmxnet3Vrdma',
  'VirtualVmxnet2',
  'VirtualVmxnet',
  'VirtualE1000',
  'VirtualE1000e',
  'VirtualPCNet32',
  'VirtualSriovEthernetCard',
]);

/** SCSI unit numbers a disk can use; 7 is the controller's own. */
export const SCSI_DISK_UNITS = [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15];
export const MAX_SCSI_BUSES = 4;

export function isDisk(device: VimObject): boolean {
  return device.$type === 'VirtualDisk';
}

export function isScsiController(device: VimObject): boolean {
  return SCSI_CONTROLLER_TYPES.has(device.$type ?? '');
}

export function diskInfo(device: VimObject): VmDiskInfo {
  const backing = obj(device.backing);
  const bytes = num(device.capacityInBytes) || num(device.capacityInKB) * 1024;
  return {
    key: num(device.key),
    label: str(obj(device.deviceInfo).label),
    capacityBytes: bytes,
    fileName: str(backing.fileName),
    thinProvisioned: bool(backing.thinProvisioned),
    eagerlyScrub: bool(backing.eagerlyScrub),
    diskMode: str(backing.diskMode),
    controllerKey: num(device.controllerKey),
    unitNumber: num(device.unitNumber),
    uuid: str(backing.uuid),
  };
}

/** NIC details; `portgroupNames` maps distributed port group keys to names. */
export function nicInfo(device: VimObject, portgroupNames: Map<string, string>): VmNicInfo | undefined {
  if (!ETHERNET_TYPES.has(device.$type ?? '')) return undefined;
  const backing = obj(device.backing);
  const portgroupKey = str(obj(backing.port).portgroupKey);
  const network = portgroupKey ? (portgroupNames.get(portgroupKey) ?? portgroupKey) : str(backing.deviceName);
  return {
    key: num(device.key),
    label: str(obj(device.deviceInfo).label),
    type: device.$type ?? '',
    network,
    macAddress: str(device.macAddress),
  };
}

export function portgroupKeyOf(device: VimObject): string {
  return str(obj(obj(device.backing).port).portgroupKey);
}

/** vSphere sizes disks in KiB; a restore target may be larger than the source but never smaller. */
export function roundUpToKiB(bytes: number): number {
  return Math.ceil(bytes / 1024) * 1024;
}

export function addScsiControllerSpec(key: number, busNumber: number): Record<string, unknown> {
  return typedArg('VirtualDeviceConfigSpec', {
    operation: 'add',
    device: typedArg('ParaVirtualSCSIController', { key, busNumber, sharedBus: 'noSharing' }),
  });
}

export interface NewDisk {
  key: number;
  controllerKey: number;
  unitNumber: number;
  capacityBytes: number;
  thinProvisioned: boolean;
  eagerlyScrub: boolean;
  /** '[ds]' lets vSphere name the file after the VM; '[ds] dir/file.vmdk' names it. */
  fileName: string;
}

export function createDiskSpec(d: NewDisk): Record<string, unknown> {
  const bytes = roundUpToKiB(d.capacityBytes);
  return typedArg('VirtualDeviceConfigSpec', {
    operation: 'add',
    fileOperation: 'create',
    device: typedArg('VirtualDisk', {
      key: d.key,
      backing: typedArg('VirtualDiskFlatVer2BackingInfo', {
        fileName: d.fileName,
        diskMode: 'persistent',
        thinProvisioned: String(d.thinProvisioned),
        eagerlyScrub: String(d.eagerlyScrub),
      }),
      controllerKey: d.controllerKey,
      unitNumber: d.unitNumber,
      capacityInKB: bytes / 1024,
      capacityInBytes: bytes,
    }),
  });
}

export interface ExistingDisk {
  key: number;
  controllerKey: number;
  unitNumber: number;
  fileName: string;
  capacityBytes?: number;
  diskMode?: string;
}

/** Adds a disk whose files already exist: no fileOperation, so nothing is created or copied. */
export function attachDiskSpec(d: ExistingDisk): Record<string, unknown> {
  const device: Record<string, unknown> = {
    key: d.key,
    backing: typedArg('VirtualDiskFlatVer2BackingInfo', {
      fileName: d.fileName,
      diskMode: d.diskMode ?? 'persistent',
    }),
    controllerKey: d.controllerKey,
    unitNumber: d.unitNumber,
  };
  if (d.capacityBytes) {
    const bytes = roundUpToKiB(d.capacityBytes);
    device.capacityInKB = bytes / 1024;
    device.capacityInBytes = bytes;
  }
  return typedArg('VirtualDeviceConfigSpec', { operation: 'add', device: typedArg('VirtualDisk', device) });
}

/** Removes the disk from the VM and leaves its files alone (no fileOperation 'destroy'). */
export function detachDiskSpec(disk: VmDiskInfo): Record<string, unknown> {
  return typedArg('VirtualDeviceConfigSpec', {
    operation: 'remove',
    device: typedArg('VirtualDisk', {
      key: disk.key,
      backing: typedArg('VirtualDiskFlatVer2BackingInfo', { fileName: disk.fileName, diskMode: disk.diskMode || 'persistent' }),
      controllerKey: disk.controllerKey,
      unitNumber: disk.unitNumber,
      capacityInKB: Math.ceil(disk.capacityBytes / 1024),
    }),
  });
}

export function addNicSpec(key: number, network: NetworkInfo): Record<string, unknown> {
  const backing =
    network.kind === 'Network'
      ? typedArg('VirtualEthernetCardNetworkBackingInfo', { deviceName: network.name, network: refArg(network.ref) })
      : typedArg('VirtualEthernetCardDistributedVirtualPortBackingInfo', {
          port: { switchUuid: network.switchUuid, portgroupKey: network.portgroupKey },
        });
  return typedArg('VirtualDeviceConfigSpec', {
    operation: 'add',
    device: typedArg('VirtualVmxnet3', {
      key,
      backing,
      connectable: { startConnected: 'true', allowGuestControl: 'true', connected: 'false' },
      addressType: 'generated',
    }),
  });
}

/** The first free SCSI slot on the VM's controllers, or where a new controller would go. */
export function findFreeScsiSlot(devices: VimObject[]): { controllerKey: number; unitNumber: number } | { newControllerBus: number } {
  const controllers = devices.filter(isScsiController).sort((a, b) => num(a.busNumber) - num(b.busNumber));
  for (const c of controllers) {
    const key = num(c.key);
    const own = str(c.scsiCtlrUnitNumber) === '' ? 7 : num(c.scsiCtlrUnitNumber);
    const used = new Set(devices.filter((d) => num(d.controllerKey) === key).map((d) => num(d.unitNumber)));
    const unit = SCSI_DISK_UNITS.find((u) => u !== own && !used.has(u));
    if (unit !== undefined) return { controllerKey: key, unitNumber: unit };
  }
  const buses = new Set(controllers.map((c) => num(c.busNumber)));
  for (let bus = 0; bus < MAX_SCSI_BUSES; bus++) {
    if (!buses.has(bus)) return { newControllerBus: bus };
  }
  throw new RestoreError(
    FailureType.InvalidRequest,
    `no free SCSI slot: all ${MAX_SCSI_BUSES} controllers have ${SCSI_DISK_UNITS.length} disks`,
  );
}
