import { VSphereNotFoundError } from './errors';
import type { VSphereSession } from './session';
import {
  addScsiControllerSpec,
  attachDiskSpec,
  detachDiskSpec,
  diskInfo,
  findFreeScsiSlot,
  isDisk,
  nicInfo,
  portgroupKeyOf,
  type VmDiskInfo,
  type VmNicInfo,
} from './devices';
import {
  VSphereFaultError,
  arrayOf,
  isFault,
  list,
  num,
  obj,
  ref,
  refArg,
  str,
  typedArg,
  type MoRef,
  type VimObject,
  type VimValue,
} from './soap';
import type { TaskWaitOptions } from './task';

export type PowerState = 'poweredOn' | 'poweredOff' | 'suspended';

export interface VmConfigInfo {
  name: string;
  uuid: string;
  guestId: string;
  cpus: number;
  memoryMiB: number;
  firmware: 'bios' | 'efi';
  /** '[LocalDS_0] web01/web01.vmx' */
  vmPathName: string;
  extraConfig: Record<string, string>;
  disks: VmDiskInfo[];
  nics: VmNicInfo[];
}

export interface SnapshotInfo {
  ref: MoRef;
  name: string;
  description: string;
  createTime: string;
}

export interface AttachDiskOptions {
  /** Reported capacity; vCenter reads it from the descriptor, vcsim takes it from here. */
  capacityBytes?: number;
  /** Default 'persistent'. */
  diskMode?: string;
}

function isGone(err: unknown): boolean {
  return isFault(err, 'ManagedObjectNotFound') || err instanceof VSphereNotFoundError;
}

function isSameFile(a: string, b: string): boolean {
  return a.replace(/\]\s+/, '] ') === b.replace(/\]\s+/, '] ');
}

/** A virtual machine (govmomi object.VirtualMachine): its operations are idempotent where vSphere's are not. */
export class Vm {
  constructor(
    private readonly client: VSphereSession,
    readonly moRef: MoRef,
    /** Known when the VM was found by name or created; undefined for {@link VSphereClient.vm}. */
    readonly name?: string,
  ) {}

  /** The managed object id, e.g. 'vm-42': what workflows store to find the VM again. */
  get ref(): string {
    return this.moRef.value;
  }

  private get label(): string {
    return this.name ? `vm '${this.name}' (${this.ref})` : `vm ${this.ref}`;
  }

  /** Properties of this VM; a VM that no longer exists is a VSphereNotFoundError. */
  private async props(paths: string[]): Promise<Record<string, VimValue>> {
    try {
      return await this.client.getProperties(this.moRef, paths);
    } catch (err) {
      if (isFault(err, 'ManagedObjectNotFound')) {
        throw new VSphereNotFoundError(`${this.label} not found in ${this.client.url.host}`);
      }
      throw err;
    }
  }

  private async devices(): Promise<VimObject[]> {
    const p = await this.props(['config.hardware.device']);
    return arrayOf(p['config.hardware.device']).map(obj);
  }

  async config(): Promise<VmConfigInfo> {
    const p = await this.props(['config', 'network']);
    const config = obj(p.config);
    if (!config.name) {
      throw new VSphereNotFoundError(`${this.label} has no configuration (inaccessible or being created)`);
    }
    const hardware = obj(config.hardware);
    const devices = list(hardware.device).map(obj);

    const portgroupNames = new Map<string, string>();
    if (devices.some((d) => portgroupKeyOf(d))) {
      const networks = arrayOf(p.network)
        .map((n) => ref(n))
        .filter((n): n is MoRef => n?.type === 'DistributedVirtualPortgroup');
      const named = await this.client.retrieve(networks, [{ type: 'DistributedVirtualPortgroup', paths: ['name', 'key'] }]);
      for (const n of named) portgroupNames.set(str(n.props.key) || n.ref.value, str(n.props.name));
    }

    const extraConfig: Record<string, string> = {};
    for (const ov of list(config.extraConfig).map(obj)) extraConfig[str(ov.key)] = str(ov.value);

    return {
      name: str(config.name),
      uuid: str(config.uuid),
      guestId: str(config.guestId),
      cpus: num(hardware.numCPU),
      memoryMiB: num(hardware.memoryMB),
      firmware: str(config.firmware) === 'efi' ? 'efi' : 'bios',
      vmPathName: str(obj(config.files).vmPathName),
      extraConfig,
      disks: devices.filter(isDisk).map(diskInfo),
      nics: devices.map((d) => nicInfo(d, portgroupNames)).filter((n): n is VmNicInfo => !!n),
    };
  }

  /** Name of the ESXi host the VM is registered on (the host that serves its disks' NFC streams). */
  async hostName(): Promise<string> {
    const host = ref((await this.props(['runtime.host']))['runtime.host']);
    if (!host) throw new VSphereNotFoundError(`${this.label} is not registered on a host`);
    return str((await this.client.getProperties(host, ['name'])).name);
  }

  async powerState(): Promise<PowerState> {
    const p = await this.props(['runtime.powerState']);
    return str(p['runtime.powerState']) as PowerState;
  }

  /** No-op when already on. */
  async powerOn(opts: TaskWaitOptions = {}): Promise<void> {
    if ((await this.powerState()) === 'poweredOn') return;
    await this.runPowerTask('PowerOnVM_Task', 'poweredOn', opts);
  }

  /** Hard power off; no-op when already off. */
  async powerOff(opts: TaskWaitOptions = {}): Promise<void> {
    if ((await this.powerState()) === 'poweredOff') return;
    await this.runPowerTask('PowerOffVM_Task', 'poweredOff', opts);
  }

  private async runPowerTask(method: string, wanted: PowerState, opts: TaskWaitOptions): Promise<void> {
    try {
      const task = await this.client.startTask(method, { _this: refArg(this.moRef) }, this.label);
      await task.wait(opts);
    } catch (err) {
      // Someone else (HA, a parallel attempt) got there first.
      if (
        err instanceof VSphereFaultError &&
        (err.fault === 'InvalidPowerState' || err.fault === 'InvalidState') &&
        (await this.powerState()) === wanted
      ) {
        return;
      }
      throw err;
    }
  }

  /**
   * Powers off and deletes the VM with every disk still attached to it. Detach disks that belong to
   * other VMs first. No-op when the VM is already gone.
   */
  async destroy(opts: TaskWaitOptions = {}): Promise<void> {
    try {
      await this.powerOff(opts);
      const task = await this.client.startTask('Destroy_Task', { _this: refArg(this.moRef) }, this.label);
      await task.wait(opts);
    } catch (err) {
      if (isGone(err)) return;
      throw err;
    }
  }

  /** All snapshots, depth first, from the snapshot tree. */
  async snapshots(): Promise<SnapshotInfo[]> {
    const p = await this.props(['snapshot']);
    const out: SnapshotInfo[] = [];
    const walk = (nodes: VimObject[]): void => {
      for (const n of nodes) {
        const snapRef = ref(n.snapshot);
        if (snapRef) {
          out.push({
            ref: snapRef,
            name: str(n.name),
            description: str(n.description),
            createTime: str(n.createTime),
          });
        }
        walk(list(n.childSnapshotList).map(obj));
      }
    };
    walk(list(obj(p.snapshot).rootSnapshotList).map(obj));
    return out;
  }

  /** Returns the existing snapshot when one with this name exists, so a retried step does not add another. */
  async createSnapshot(
    name: string,
    description = '',
    opts: TaskWaitOptions & { memory?: boolean; quiesce?: boolean } = {},
  ): Promise<SnapshotInfo> {
    const existing = (await this.snapshots()).find((s) => s.name === name);
    if (existing) return existing;
    const task = await this.client.startTask(
      'CreateSnapshot_Task',
      {
        _this: refArg(this.moRef),
        name,
        description,
        memory: String(!!opts.memory),
        quiesce: String(!!opts.quiesce),
      },
      `${this.label}, snapshot '${name}'`,
    );
    const snapRef = ref(await task.wait(opts));
    const created = (await this.snapshots()).find((s) => (snapRef ? s.ref.value === snapRef.value : s.name === name));
    if (!created) throw new VSphereFaultError('InvalidResponse', `snapshot '${name}' of ${this.label} not found after creation`);
    return created;
  }

  /** Removes the named snapshot (not its children); returns false when there is none. */
  async removeSnapshot(name: string, opts: TaskWaitOptions & { consolidate?: boolean; removeChildren?: boolean } = {}): Promise<boolean> {
    const snap = (await this.snapshots()).find((s) => s.name === name);
    if (!snap) return false;
    try {
      const task = await this.client.startTask(
        'RemoveSnapshot_Task',
        {
          _this: refArg(snap.ref),
          removeChildren: String(!!opts.removeChildren),
          consolidate: String(opts.consolidate ?? true),
        },
        `${this.label}, snapshot '${name}'`,
      );
      await task.wait(opts);
    } catch (err) {
      if (err instanceof VSphereFaultError && err.fault === 'ManagedObjectNotFound') return false;
      throw err;
    }
    return true;
  }

  /** The attached disk backed by `fileName`, or undefined when it is not attached. */
  async attachedDisk(fileName: string): Promise<VmDiskInfo | undefined> {
    return (await this.devices())
      .filter(isDisk)
      .map(diskInfo)
      .find((d) => isSameFile(d.fileName, fileName));
  }

  /** Descriptor paths of the attached disks, e.g. '[LocalDS_0] web01/web01.vmdk'. */
  async attachedDiskFiles(): Promise<string[]> {
    return (await this.devices()).filter(isDisk).map((d) => diskInfo(d).fileName);
  }

  /**
   * Hot-adds an existing disk (e.g. a restore target's disk to a HotAdd proxy) on a free SCSI slot,
   * adding a paravirtual controller when all are full. Returns the device key; when the file is
   * already attached, the key of that device.
   */
  async attachDisk(fileName: string, opts: AttachDiskOptions & TaskWaitOptions = {}): Promise<number> {
    const devices = await this.devices();
    const present = devices
      .filter(isDisk)
      .map(diskInfo)
      .find((d) => isSameFile(d.fileName, fileName));
    if (present) return present.key;

    const slot = findFreeScsiSlot(devices);
    const deviceChange: Record<string, unknown>[] = [];
    let controllerKey: number;
    let unitNumber: number;
    if ('newControllerBus' in slot) {
      controllerKey = -100;
      unitNumber = 0;
      deviceChange.push(addScsiControllerSpec(controllerKey, slot.newControllerBus));
    } else {
      ({ controllerKey, unitNumber } = slot);
    }
    deviceChange.push(
      attachDiskSpec({
        key: -1,
        controllerKey,
        unitNumber,
        fileName,
        capacityBytes: opts.capacityBytes,
        diskMode: opts.diskMode,
      }),
    );
    await this.reconfigure(deviceChange, `${this.label}, attach '${fileName}'`, opts);

    const attached = (await this.devices())
      .filter(isDisk)
      .map(diskInfo)
      .find((d) => isSameFile(d.fileName, fileName));
    if (!attached) {
      throw new VSphereFaultError('InvalidResponse', `'${fileName}' is not attached to ${this.label} after reconfigure`);
    }
    return attached.key;
  }

  /** Removes the disk from the VM, keeping its files. Returns false when it was not attached. */
  async detachDisk(fileName: string, opts: TaskWaitOptions = {}): Promise<boolean> {
    const disk = (await this.devices())
      .filter(isDisk)
      .map(diskInfo)
      .find((d) => isSameFile(d.fileName, fileName));
    if (!disk) return false;
    await this.reconfigure([detachDiskSpec(disk)], `${this.label}, detach '${fileName}'`, opts);
    return true;
  }

  private async reconfigure(deviceChange: Record<string, unknown>[], target: string, opts: TaskWaitOptions): Promise<void> {
    const task = await this.client.startTask(
      'ReconfigVM_Task',
      { _this: refArg(this.moRef), spec: typedArg('VirtualMachineConfigSpec', { deviceChange }) },
      target,
    );
    await task.wait(opts);
  }
}
