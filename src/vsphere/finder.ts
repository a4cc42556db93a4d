import { FailureType, RestoreError } from '../domain/errors';
import { formatDatastorePath, parseDatastorePath } from './datastore-path';
import { addNicSpec, addScsiControllerSpec, createDiskSpec, MAX_SCSI_BUSES, SCSI_DISK_UNITS, type NetworkInfo } from './devices';
import { VSphereNotFoundError } from './errors';
import { VSphereSession, type ConnectOptions } from './session';
import { VSphereFaultError, arrayOf, bool, mustRef, num, obj, ref, refArg, refString, str, stringArg, typedArg, type MoRef } from './soap';
import { Vm } from './vm';

export interface Datacenter {
  ref: MoRef;
  name: string;
  /** Inventory path, e.g. '/DC0'. */
  path: string;
  vmFolder: MoRef;
  hostFolder: MoRef;
  datastoreFolder: MoRef;
  networkFolder: MoRef;
}

export interface DatastoreInfo {
  ref: MoRef;
  name: string;
  /** 'VMFS', 'NFS', 'vsan', 'OTHER' (vcsim's local directories)… */
  type: string;
  /** Datastore URL; a local directory in vcsim. */
  url: string;
  capacityBytes: number;
  freeSpaceBytes: number;
  accessible: boolean;
}

export interface FolderInfo {
  ref: MoRef;
  /** Inventory path, e.g. '/DC0/vm/restores'. */
  path: string;
}

export interface ResourcePoolInfo {
  ref: MoRef;
  /** Inventory path, e.g. '/DC0/host/DC0_C0/Resources'. */
  path: string;
  /** The cluster or standalone host (ComputeResource) the pool belongs to. */
  owner: MoRef;
}

export interface HostInfo {
  ref: MoRef;
  name: string;
}

export interface NewVmDisk {
  capacityBytes: number;
  thinProvisioned: boolean;
  /** Zero the whole disk at creation (thick eager-zeroed). Ignored for thin disks. */
  eagerlyScrub?: boolean;
  /** '[ds] dir/file.vmdk' or 'dir/file.vmdk' on the VM's datastore; default: named by vSphere after the VM. */
  fileName?: string;
}

export interface NewVmNic {
  /** A network from {@link VSphereClient.network}, or its name. */
  network: NetworkInfo | string;
}

export interface CreateVmSpec {
  name: string;
  /** Default: the datacenter's VM folder. A path as accepted by {@link VSphereClient.folder}. */
  folder?: FolderInfo | string;
  /** Default: {@link VSphereClient.resourcePool}'s default. */
  pool?: ResourcePoolInfo | string;
  /** Required by vCenter only when the pool's cluster has no DRS. */
  host?: HostInfo | MoRef;
  /** Where the VM's files and (by default) its disks go. */
  datastore: DatastoreInfo | string;
  guestId: string;
  cpus: number;
  memoryMiB: number;
  firmware: 'bios' | 'efi';
  extraConfig?: Record<string, string>;
  annotation?: string;
  nics?: NewVmNic[];
  disks?: NewVmDisk[];
}

export type DatacenterArg = Datacenter | string;

/** Known names in "not found" messages, capped so that a large inventory does not flood the log. */
function known(names: Iterable<string>): string {
  const sorted = [...new Set(names)].sort();
  const shown = sorted.slice(0, 30).join(', ');
  return `(known: ${sorted.length ? shown : 'none'}${sorted.length > 30 ? `, … ${sorted.length - 30} more` : ''})`;
}

/**
 * The finder over a vSphere session (govmomi find.Finder): inventory lookups by name or path return
 * plain objects that name what they found; VMs are {@link Vm} objects. A name that does not exist is a
 * {@link VSphereNotFoundError} listing the names that do.
 */
export class VSphereClient extends VSphereSession {
  static async connect(opts: ConnectOptions): Promise<VSphereClient> {
    return new VSphereClient(...(await VSphereSession.login(opts)));
  }

  // ---- inventory -------------------------------------------------------------------------------

  /** The named datacenter ('DC0' or its path '/Folder/DC0'), or the only one when no name is given. */
  async datacenter(name?: string): Promise<Datacenter> {
    const found = await this.findObjects(
      this.content.rootFolder,
      ['Datacenter'],
      [
        {
          type: 'Datacenter',
          paths: ['name', 'parent', 'vmFolder', 'hostFolder', 'datastoreFolder', 'networkFolder'],
        },
      ],
    );
    const all: Datacenter[] = [];
    for (const o of found) {
      const p = o.props;
      const dcName = str(p.name);
      all.push({
        ref: o.ref,
        name: dcName,
        path: `${await this.folderPathOf(ref(p.parent))}/${dcName}`,
        vmFolder: mustRef(p.vmFolder, 'vmFolder'),
        hostFolder: mustRef(p.hostFolder, 'hostFolder'),
        datastoreFolder: mustRef(p.datastoreFolder, 'datastoreFolder'),
        networkFolder: mustRef(p.networkFolder, 'networkFolder'),
      });
    }
    if (name === undefined || name === '') {
      if (all.length === 1) return all[0];
      if (all.length === 0) throw new VSphereNotFoundError(`no datacenter in ${this.url.host}`);
      throw new RestoreError(
        FailureType.InvalidRequest,
        `${this.url.host} has ${all.length} datacenters; name one ${known(all.map((d) => d.path))}`,
      );
    }
    const wanted = name.replace(/\/+$/, '');
    const match = all.find((d) => d.name === wanted || d.path === wanted || d.path === `/${wanted}`);
    if (!match) {
      throw new VSphereNotFoundError(`datacenter '${name}' not found in ${this.url.host} ${known(all.map((d) => d.name))}`);
    }
    return match;
  }

  /** Path of a folder from the root, '' for the root folder itself. */
  private async folderPathOf(folder: MoRef | undefined): Promise<string> {
    const names: string[] = [];
    let cur = folder;
    while (cur && !(cur.type === this.content.rootFolder.type && cur.value === this.content.rootFolder.value)) {
      const p = await this.getProperties(cur, ['name', 'parent']);
      names.unshift(str(p.name));
      cur = ref(p.parent);
    }
    return names.length ? `/${names.join('/')}` : '';
  }

  private async dc(dc: DatacenterArg): Promise<Datacenter> {
    return typeof dc === 'string' ? this.datacenter(dc) : dc;
  }

  async listDatastores(dcArg: DatacenterArg): Promise<DatastoreInfo[]> {
    const dc = await this.dc(dcArg);
    const found = await this.retrieve([dc.ref], [{ type: 'Datastore', paths: ['name', 'summary'] }], {
      type: 'Datacenter',
      path: 'datastore',
    });
    return found
      .map((o) => {
        const s = obj(o.props.summary);
        return {
          ref: o.ref,
          name: str(o.props.name),
          type: str(s.type),
          url: str(s.url),
          capacityBytes: num(s.capacity),
          freeSpaceBytes: num(s.freeSpace),
          accessible: bool(s.accessible),
        };
      })
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  async datastore(dcArg: DatacenterArg, name: string): Promise<DatastoreInfo> {
    const dc = await this.dc(dcArg);
    const all = await this.listDatastores(dc);
    const match = all.find((d) => d.name === name);
    if (!match) {
      throw new VSphereNotFoundError(`datastore '${name}' not found in datacenter '${dc.name}' ${known(all.map((d) => d.name))}`);
    }
    return match;
  }

  /** A standard or distributed port group by name, with what a NIC backing needs. */
  async network(dcArg: DatacenterArg, name: string): Promise<NetworkInfo> {
    const dc = await this.dc(dcArg);
    const found = await this.retrieve(
      [dc.ref],
      [
        { type: 'Network', paths: ['name'] },
        { type: 'DistributedVirtualPortgroup', paths: ['key', 'config.distributedVirtualSwitch'] },
      ],
      { type: 'Datacenter', path: 'network' },
    );
    const match = found.find((o) => str(o.props.name) === name);
    if (!match) {
      throw new VSphereNotFoundError(
        `network '${name}' not found in datacenter '${dc.name}' ${known(found.map((o) => str(o.props.name)))}`,
      );
    }
    if (match.ref.type === 'Network') return { kind: 'Network', ref: match.ref, name };
    if (match.ref.type === 'DistributedVirtualPortgroup') {
      const dvs = mustRef(match.props['config.distributedVirtualSwitch'], 'config.distributedVirtualSwitch');
      const dvsProps = await this.getProperties(dvs, ['uuid']);
      return {
        kind: 'DistributedVirtualPortgroup',
        ref: match.ref,
        name,
        portgroupKey: str(match.props.key) || match.ref.value,
        switchUuid: str(dvsProps.uuid),
      };
    }
    throw new RestoreError(
      FailureType.InvalidRequest,
      `network '${name}' in datacenter '${dc.name}' is a ${match.ref.type}; only port groups are supported`,
    );
  }

  /**
   * A VM folder: the datacenter's VM folder by default, a path relative to it ('restores/2024'),
   * or an inventory path ('/DC0/vm/restores').
   */
  async folder(dcArg: DatacenterArg, path?: string): Promise<FolderInfo> {
    const dc = await this.dc(dcArg);
    const root = { ref: dc.vmFolder, path: `${dc.path}/vm` };
    const found = await this.resolvePath(dc, root, path, 'folder', ['Folder', 'Datacenter']);
    if (found.ref.type !== 'Folder') {
      throw new RestoreError(FailureType.InvalidRequest, `'${found.path}' is a ${found.ref.type}, not a folder`);
    }
    return found;
  }

  /**
   * A resource pool: by default the root pool of the datacenter's first cluster (or host). A path is
   * relative to the host folder ('DC0_C0/Resources/restores', or just 'DC0_C0' for its root pool)
   * or an inventory path ('/DC0/host/DC0_C0/Resources').
   */
  async resourcePool(dcArg: DatacenterArg, path?: string): Promise<ResourcePoolInfo> {
    const dc = await this.dc(dcArg);
    let pool: FolderInfo;
    if (path === undefined || path === '') {
      const computes = await this.findObjects(
        dc.hostFolder,
        ['ComputeResource'],
        [{ type: 'ComputeResource', paths: ['name', 'resourcePool'] }],
      );
      const first =
        computes.find((c) => c.ref.type === 'ClusterComputeResource' && ref(c.props.resourcePool)) ??
        computes.find((c) => ref(c.props.resourcePool));
      if (!first) throw new VSphereNotFoundError(`datacenter '${dc.name}' has no cluster or host`);
      const poolRef = mustRef(first.props.resourcePool, 'resourcePool');
      pool = { ref: poolRef, path: await this.inventoryPath(poolRef) };
    } else {
      const root = { ref: dc.hostFolder, path: `${dc.path}/host` };
      pool = await this.resolvePath(dc, root, path, 'resource pool', [
        'Folder',
        'Datacenter',
        'ComputeResource',
        'ClusterComputeResource',
        'ResourcePool',
        'VirtualApp',
      ]);
      if (pool.ref.type === 'ComputeResource' || pool.ref.type === 'ClusterComputeResource') {
        const rp = mustRef((await this.getProperties(pool.ref, ['resourcePool'])).resourcePool, 'resourcePool');
        pool = { ref: rp, path: `${pool.path}/Resources` };
      }
      if (pool.ref.type !== 'ResourcePool' && pool.ref.type !== 'VirtualApp') {
        throw new RestoreError(FailureType.InvalidRequest, `'${pool.path}' is a ${pool.ref.type}, not a resource pool`);
      }
    }
    const owner = mustRef((await this.getProperties(pool.ref, ['owner'])).owner, 'owner');
    return { ...pool, owner };
  }

  /** A connected host, not in maintenance, of the pool's cluster or standalone host. */
  async hostForPool(pool: ResourcePoolInfo | MoRef): Promise<HostInfo> {
    const owner = 'owner' in pool ? pool.owner : mustRef((await this.getProperties(pool, ['owner'])).owner, 'owner');
    const hosts = arrayOf((await this.getProperties(owner, ['host'])).host)
      .map((h) => ref(h))
      .filter((h): h is MoRef => !!h);
    const props = await this.retrieve(hosts, [
      { type: 'HostSystem', paths: ['name', 'runtime.connectionState', 'runtime.inMaintenanceMode'] },
    ]);
    const usable = props.find(
      (h) => str(h.props['runtime.connectionState']) === 'connected' && !bool(h.props['runtime.inMaintenanceMode']),
    );
    if (!usable) {
      throw new VSphereNotFoundError(
        `no connected host outside maintenance mode for ${refString(owner)} ${known(props.map((h) => str(h.props.name)))}`,
      );
    }
    return { ref: usable.ref, name: str(usable.props.name) };
  }

  /** Inventory path of any managed entity, e.g. '/DC0/host/DC0_C0/Resources'. */
  async inventoryPath(entity: MoRef): Promise<string> {
    const p = await this.getProperties(entity, ['name', 'parent']);
    return `${await this.folderPathOf(ref(p.parent))}/${str(p.name)}`;
  }

  /**
   * Walks `path` (absolute from the root, or relative to `root`) with SearchIndex.FindChild, and on a
   * miss names the children that do exist.
   */
  private async resolvePath(
    dc: Datacenter,
    root: FolderInfo,
    path: string | undefined,
    what: string,
    listTypes: string[],
  ): Promise<FolderInfo> {
    if (path === undefined || path === '' || path === '.') return root;
    const absolute = path.startsWith('/');
    let cur: FolderInfo = absolute ? { ref: this.content.rootFolder, path: '' } : root;
    for (const segment of path.split('/').filter((s) => s !== '')) {
      const child = ref(
        await this.call('FindChild', {
          _this: refArg(this.content.searchIndex),
          entity: refArg(cur.ref),
          name: segment,
        }),
      );
      if (!child) {
        const names = await this.childNames(cur.ref, listTypes);
        throw new VSphereNotFoundError(
          `${what} '${path}' not found in datacenter '${dc.name}': '${cur.path || '/'}' has no child '${segment}' ${known(names)}`,
        );
      }
      cur = { ref: child, path: `${cur.path}/${segment}` };
    }
    return cur;
  }

  private async childNames(parent: MoRef, types: string[]): Promise<string[]> {
    const paths: Record<string, string[]> = {
      Folder: ['childEntity'],
      Datacenter: ['vmFolder', 'hostFolder', 'datastoreFolder', 'networkFolder'],
      ComputeResource: ['resourcePool'],
      ClusterComputeResource: ['resourcePool'],
      ResourcePool: ['resourcePool'],
      VirtualApp: ['resourcePool'],
    };
    const props = await this.getProperties(parent, paths[parent.type] ?? []);
    const children = Object.values(props)
      .flatMap((v) => arrayOf(v))
      .map((v) => ref(v))
      .filter((r): r is MoRef => !!r && types.includes(r.type));
    const named = await this.retrieve(children, [{ type: 'ManagedEntity', paths: ['name'] }]);
    return named.map((o) => str(o.props.name));
  }

  // ---- virtual machines ------------------------------------------------------------------------

  /** The VM with this name anywhere in the datacenter; the first one if names repeat across folders. */
  async findVmByName(dcArg: DatacenterArg, name: string): Promise<Vm | null> {
    const dc = await this.dc(dcArg);
    const vms = await this.findObjects(dc.vmFolder, ['VirtualMachine'], [{ type: 'VirtualMachine', paths: ['name'] }]);
    const match = vms.find((o) => str(o.props.name) === name);
    return match ? new Vm(this, match.ref, name) : null;
  }

  /** VMs whose extraConfig has `key` = `value`: how a restore finds what it created before a retry. */
  async findVmsByExtraConfig(dcArg: DatacenterArg, key: string, value: string): Promise<Vm[]> {
    const dc = await this.dc(dcArg);
    const vms = await this.findObjects(
      dc.vmFolder,
      ['VirtualMachine'],
      [{ type: 'VirtualMachine', paths: ['name', 'config.extraConfig'] }],
    );
    return vms
      .filter((o) => arrayOf(o.props['config.extraConfig']).some((ov) => str(obj(ov).key) === key && str(obj(ov).value) === value))
      .map((o) => new Vm(this, o.ref, str(o.props.name)));
  }

  /** Every VM whose extraConfig has `key`, with its value: what a sweep checks against its restores. */
  async listVmsByExtraConfigKey(dcArg: DatacenterArg, key: string): Promise<Array<{ vm: Vm; name: string; value: string }>> {
    const dc = await this.dc(dcArg);
    const vms = await this.findObjects(
      dc.vmFolder,
      ['VirtualMachine'],
      [{ type: 'VirtualMachine', paths: ['name', 'config.extraConfig'] }],
    );
    const out: Array<{ vm: Vm; name: string; value: string }> = [];
    for (const o of vms) {
      const entry = arrayOf(o.props['config.extraConfig']).find((ov) => str(obj(ov).key) === key);
      if (entry) out.push({ vm: new Vm(this, o.ref, str(o.props.name)), name: str(o.props.name), value: str(obj(entry).value) });
    }
    return out;
  }

  /** A VM by its managed object id ('vm-42') or reference, without a round trip. */
  vm(vmRef: string | MoRef): Vm {
    return new Vm(this, typeof vmRef === 'string' ? { type: 'VirtualMachine', value: vmRef } : vmRef);
  }

  /**
   * Creates an empty VM with a paravirtual SCSI controller per 15 disks, the disks (descriptor and
   * extent created by vSphere) and vmxnet3 NICs, via CreateVM_Task.
   */
  async createVm(dcArg: DatacenterArg, spec: CreateVmSpec): Promise<Vm> {
    const dc = await this.dc(dcArg);
    const datastore = typeof spec.datastore === 'string' ? await this.datastore(dc, spec.datastore) : spec.datastore;
    const folder = typeof spec.folder === 'object' ? spec.folder : await this.folder(dc, spec.folder);
    const pool = typeof spec.pool === 'object' ? spec.pool : await this.resourcePool(dc, spec.pool);
    const disks = spec.disks ?? [];
    if (disks.length > SCSI_DISK_UNITS.length * MAX_SCSI_BUSES) {
      throw new RestoreError(
        FailureType.InvalidRequest,
        `vm '${spec.name}' has ${disks.length} disks; at most ${SCSI_DISK_UNITS.length * MAX_SCSI_BUSES} fit on SCSI`,
      );
    }

    const deviceChange: Record<string, unknown>[] = [];
    const controllers = Math.ceil(disks.length / SCSI_DISK_UNITS.length) || 1;
    for (let bus = 0; bus < controllers; bus++) deviceChange.push(addScsiControllerSpec(-100 - bus, bus));
    disks.forEach((d, i) => {
      if (!(d.capacityBytes > 0)) {
        throw new RestoreError(FailureType.InvalidRequest, `disk ${i} of vm '${spec.name}' has no capacity`);
      }
      const fileName = newDiskFileName(datastore.name, d.fileName);
      deviceChange.push(
        createDiskSpec({
          key: -1000 - i,
          controllerKey: -100 - Math.floor(i / SCSI_DISK_UNITS.length),
          unitNumber: SCSI_DISK_UNITS[i % SCSI_DISK_UNITS.length],
          capacityBytes: d.capacityBytes,
          thinProvisioned: d.thinProvisioned,
          eagerlyScrub: !d.thinProvisioned && !!d.eagerlyScrub,
          fileName,
        }),
      );
    });
    for (const [i, nic] of (spec.nics ?? []).entries()) {
      const network = typeof nic.network === 'string' ? await this.network(dc, nic.network) : nic.network;
      deviceChange.push(addNicSpec(-2000 - i, network));
    }

    // Field order follows the vim25 schema; vCenter rejects out-of-order elements.
    const config: Record<string, unknown> = {
      name: spec.name,
      guestId: spec.guestId,
    };
    if (spec.annotation) config.annotation = spec.annotation;
    config.files = { vmPathName: formatDatastorePath(datastore.name, '') };
    config.numCPUs = spec.cpus;
    config.memoryMB = spec.memoryMiB;
    config.deviceChange = deviceChange;
    config.extraConfig = Object.entries(spec.extraConfig ?? {}).map(([key, value]) =>
      typedArg('OptionValue', { key, value: stringArg(value) }),
    );
    config.firmware = spec.firmware;

    const args: Record<string, unknown> = {
      _this: refArg(folder.ref),
      config: typedArg('VirtualMachineConfigSpec', config),
      pool: refArg(pool.ref),
    };
    if (spec.host) args.host = refArg('ref' in spec.host ? spec.host.ref : spec.host);
    const task = await this.startTask('CreateVM_Task', args, `vm '${spec.name}' in ${folder.path}`);
    const vmRef = ref(await task.wait());
    if (!vmRef) throw new VSphereFaultError('InvalidResponse', `CreateVM_Task returned no VM for '${spec.name}'`);
    return new Vm(this, vmRef, spec.name);
  }
}

/** '[ds] dir/x.vmdk' as given, 'dir/x.vmdk' on the VM's datastore, or '[ds]' for vSphere to name it. */
function newDiskFileName(datastore: string, fileName: string | undefined): string {
  if (!fileName) return formatDatastorePath(datastore, '');
  if (fileName.trim().startsWith('[')) {
    const p = parseDatastorePath(fileName);
    return formatDatastorePath(p.datastore, p.path);
  }
  return formatDatastorePath(datastore, fileName);
}
