/** A VM request body parsed and checked against the disks and sizes it names, as CRP validates it. */

import { normLocation } from '../common';
import { activeGrant } from './disk-access';
import { ArmError, badRequest, invalidParameter, missingParameter, operationNotAllowed } from '../errors';
import { findVmSize, type VmSizeInfo } from '../sizes';
import { type DiskRec, type HyperVGeneration, key, type OsType, type VmDiskRef, type VmNicRef, type VmRec } from '../state';
import {
  enumValue,
  hex,
  type Json,
  nowIso,
  objectAt,
  optArray,
  optBoolean,
  optNumber,
  optObject,
  optString,
  optTags,
  parseResourceId,
  resourceId,
  uuid,
  withoutKeys,
} from '../util';
import type { SimContext } from '../context';
import { CACHING, COMPUTE, DELETE_OPTIONS, diskSku, enumOrThrow, GiB, invalidLocation, OS_TYPES } from './compute-common';

const VM_READONLY = ['provisioningState', 'instanceView', 'vmId', 'timeCreated'];

const VM_MODELLED = ['hardwareProfile', 'storageProfile', 'networkProfile'];

export interface DataDiskSpec {
  lun: number;
  createOption: string;
  diskId?: string;
  name?: string;
  diskSizeGB?: number;
  storageAccountType?: string;
  caching: string;
  deleteOption: 'Detach' | 'Delete';
  toBeDetached: boolean;
}

/** An attached data disk of a VM as the spec it would be given again (a PUT without dataDisks keeps these). */
export function dataDiskSpecOf(d: VmDiskRef): DataDiskSpec {
  return {
    lun: d.lun ?? 0,
    createOption: d.createOption,
    diskId: d.diskId,
    caching: d.caching,
    deleteOption: d.deleteOption,
    toBeDetached: false,
  };
}

export interface VmSpec {
  location: string;
  tags?: Record<string, string>;
  vmSize: string;
  osDisk: { diskId: string; osType?: OsType; caching: string; deleteOption: 'Detach' | 'Delete' };
  dataDisks: DataDiskSpec[];
  nics: VmNicRef[];
  extraProperties: Json;
}

export function parseVmBody(body: Json, existing: VmRec | undefined): VmSpec {
  const location = optString(body.location, 'location');
  if (!location) throw new ArmError(400, 'LocationRequired', 'The location property is required for this definition.');
  const props = objectAt(body.properties, 'properties');
  const hw = optObject(props.hardwareProfile, 'hardwareProfile');
  const vmSize = optString(hw?.vmSize, 'hardwareProfile.vmSize') ?? existing?.vmSize;
  if (!vmSize) throw missingParameter('hardwareProfile');
  const sp = optObject(props.storageProfile, 'storageProfile');
  if (sp?.imageReference !== undefined && !existing) {
    throw invalidParameter(
      'Creating a VM from an image is not supported by the ARM simulator; attach existing managed disks with createOption Attach.',
      'imageReference',
    );
  }
  let osDisk: VmSpec['osDisk'];
  const od = optObject(sp?.osDisk, 'storageProfile.osDisk');
  if (od) {
    const opt = optString(od.createOption, 'osDisk.createOption');
    if (!opt) throw missingParameter('osDisk.createOption');
    if (opt.toLowerCase() !== 'attach') {
      throw invalidParameter(
        `osDisk.createOption '${opt}' is not supported by the ARM simulator; attach an existing managed disk with createOption 'Attach'.`,
        'osDisk.createOption',
      );
    }
    if (od.vhd !== undefined) throw invalidParameter('Unmanaged (VHD blob) OS disks are not supported; use a managed disk.', 'osDisk.vhd');
    const diskId = optString(optObject(od.managedDisk, 'osDisk.managedDisk')?.id, 'osDisk.managedDisk.id');
    if (!diskId) throw missingParameter('osDisk.managedDisk.id');
    const osTypeRaw = optString(od.osType, 'osDisk.osType');
    const osType = enumValue(osTypeRaw, OS_TYPES);
    if (osTypeRaw !== undefined && !osType)
      throw invalidParameter(`The value '${osTypeRaw}' of parameter 'osDisk.osType' is not allowed.`, 'osDisk.osType');
    osDisk = {
      diskId: key(diskId),
      osType,
      caching: enumOrThrow(optString(od.caching, 'osDisk.caching'), CACHING, 'osDisk.caching') ?? 'ReadWrite',
      deleteOption: enumOrThrow(optString(od.deleteOption, 'osDisk.deleteOption'), DELETE_OPTIONS, 'osDisk.deleteOption') ?? 'Detach',
    };
  } else if (existing) {
    osDisk = {
      diskId: existing.osDisk.diskId,
      osType: existing.osType,
      caching: existing.osDisk.caching,
      deleteOption: existing.osDisk.deleteOption,
    };
  } else {
    throw missingParameter('osDisk');
  }

  let dataDisks: DataDiskSpec[];
  const dd = optArray(sp?.dataDisks, 'storageProfile.dataDisks');
  if (dd) {
    dataDisks = dd.map((raw, i) => parseDataDisk(raw, i));
  } else {
    dataDisks = (existing?.dataDisks ?? []).map(dataDiskSpecOf);
  }

  let nics: VmNicRef[];
  const np = optObject(props.networkProfile, 'networkProfile');
  if (np?.networkInterfaceConfigurations !== undefined) {
    throw invalidParameter(
      'networkInterfaceConfigurations are not supported by the ARM simulator; create the NIC and reference it.',
      'networkProfile',
    );
  }
  const ni = optArray(np?.networkInterfaces, 'networkProfile.networkInterfaces');
  if (ni) {
    nics = ni.map((raw, i) => {
      const n = objectAt(raw, `networkInterfaces[${i}]`);
      const nid = optString(n.id, `networkInterfaces[${i}].id`);
      if (!nid) throw missingParameter(`networkInterfaces[${i}].id`);
      const p = objectAt(n.properties, `networkInterfaces[${i}].properties`);
      const ref: VmNicRef = { id: key(nid) };
      const primary = optBoolean(p.primary, 'primary');
      if (primary !== undefined) ref.primary = primary;
      const del = enumOrThrow(optString(p.deleteOption, 'deleteOption'), DELETE_OPTIONS, 'deleteOption');
      if (del) ref.deleteOption = del;
      return ref;
    });
  } else {
    nics = existing?.nics.map((n) => ({ ...n })) ?? [];
  }
  return {
    location,
    tags: body.tags !== undefined ? optTags(body.tags) : existing?.tags,
    vmSize,
    osDisk,
    dataDisks,
    nics,
    extraProperties: withoutKeys(props, [...VM_READONLY, ...VM_MODELLED]),
  };
}

function parseDataDisk(raw: unknown, i: number): DataDiskSpec {
  const d = objectAt(raw, `dataDisks[${i}]`);
  const lun = optNumber(d.lun, `dataDisks[${i}].lun`);
  if (lun === undefined) throw missingParameter('dataDisk.lun');
  if (!Number.isInteger(lun) || lun < 0 || lun > 63)
    throw invalidParameter(`The value ${lun} of parameter 'lun' is out of range. Valid LUNs are 0-63.`, `dataDisks[${i}].lun`);
  const opt = optString(d.createOption, `dataDisks[${i}].createOption`);
  if (!opt) throw missingParameter('dataDisk.createOption');
  const createOption = enumValue(opt, ['Attach', 'Empty', 'FromImage', 'Copy', 'Restore'] as const);
  if (createOption !== 'Attach' && createOption !== 'Empty') {
    throw invalidParameter(
      `Data disk createOption '${opt}' is not supported by the ARM simulator; use Attach or Empty.`,
      `dataDisks[${i}].createOption`,
    );
  }
  const md = optObject(d.managedDisk, `dataDisks[${i}].managedDisk`);
  const diskId = optString(md?.id, `dataDisks[${i}].managedDisk.id`);
  if (createOption === 'Attach' && !diskId) throw missingParameter('dataDisk.managedDisk.id');
  const diskSizeGB = optNumber(d.diskSizeGB, `dataDisks[${i}].diskSizeGB`);
  if (createOption === 'Empty' && !diskId && diskSizeGB === undefined) throw missingParameter('dataDisk.diskSizeGB');
  return {
    lun,
    createOption,
    diskId: diskId ? key(diskId) : undefined,
    name: optString(d.name, `dataDisks[${i}].name`),
    diskSizeGB,
    storageAccountType: diskSku(optString(md?.storageAccountType, 'managedDisk.storageAccountType')),
    caching: enumOrThrow(optString(d.caching, 'caching'), CACHING, `dataDisks[${i}].caching`) ?? 'None',
    deleteOption: enumOrThrow(optString(d.deleteOption, 'deleteOption'), DELETE_OPTIONS, `dataDisks[${i}].deleteOption`) ?? 'Detach',
    toBeDetached: optBoolean(d.toBeDetached, 'toBeDetached') ?? false,
  };
}

interface VmPlan {
  size: VmSizeInfo;
  osType: OsType;
  generation: HyperVGeneration;
  osDisk: DiskRec;
  /** Data disks after the change, with disks to create for `Empty` entries. */
  dataDisks: Array<{ spec: DataDiskSpec; disk?: DiskRec; create?: { name: string; sizeGB: number; sku: string } }>;
}

/** CRP-style validation of a VM model against the current state; throws the ARM error Azure would send. */
export function planVm(sim: SimContext, vmKey: string, vmName: string, rgName: string, spec: VmSpec, existing: VmRec | undefined): VmPlan {
  const location = normLocation(spec.location);
  if (existing && existing.location !== location) throw invalidLocation(vmName, existing.location, spec.location, rgName);
  const size = findVmSize(spec.vmSize);
  if (!size) {
    throw invalidParameter(
      `The value ${spec.vmSize} provided for the VM size is not valid. The valid sizes in the current region are: ${listSizes()}.`,
      'vmSize',
    );
  }

  const osDisk = lookupDisk(sim, spec.osDisk.diskId);
  checkDiskUsable(sim, osDisk, vmKey, vmName, location);
  const osType = spec.osDisk.osType ?? osDisk.osType;
  if (!osType) throw missingParameter('osDisk.osType');
  if (spec.osDisk.osType && osDisk.osType && spec.osDisk.osType !== osDisk.osType) {
    throw invalidParameter(
      `The osType '${spec.osDisk.osType}' given for the OS disk does not match the osType '${osDisk.osType}' of managed disk ${osDisk.id}.`,
      'osDisk.osType',
    );
  }
  const generation = osDisk.hyperVGeneration ?? 'V1';
  if (!size.generations.includes(generation)) {
    throw badRequest(
      `The selected VM size '${size.name}' cannot boot Hypervisor Generation '${generation.slice(1)}'. If this was a Create operation please check that the Hypervisor Generation of the Image matches the Hypervisor Generation of the selected VM Size. If this was an Update operation please select a Hypervisor Generation '${generation.slice(1)}' VM Size.`,
    );
  }
  if (existing && existing.osDisk.diskId !== osDisk.id.toLowerCase()) {
    if (existing.powerState !== 'deallocated' && existing.powerState !== 'stopped') {
      throw operationNotAllowed(
        `Changing property 'osDisk.managedDisk.id' is not allowed while VM '${vmName}' is running. Stop (deallocate) the VM before swapping the OS disk.`,
      );
    }
    if (existing.hyperVGeneration !== generation) {
      throw badRequest(
        `The Hyper-V generation '${generation}' of OS disk '${osDisk.name}' does not match the Hyper-V generation '${existing.hyperVGeneration}' of virtual machine '${vmName}'.`,
      );
    }
    if (existing.osType !== osType) {
      throw badRequest(
        `The OS type '${osType}' of disk '${osDisk.name}' does not match the OS type '${existing.osType}' of virtual machine '${vmName}'.`,
      );
    }
  }

  const active = spec.dataDisks.filter((d) => !d.toBeDetached);
  const luns = new Set<number>();
  const seen = new Set<string>([osDisk.id.toLowerCase()]);
  const dataDisks: VmPlan['dataDisks'] = [];
  for (const d of active) {
    if (luns.has(d.lun)) throw invalidParameter(`A disk at LUN ${d.lun} already exists.`, 'dataDisks');
    luns.add(d.lun);
    const existingDisk = d.diskId ? sim.state.disks[d.diskId] : undefined;
    if (d.createOption === 'Attach' || (d.diskId && existingDisk)) {
      const disk = lookupDisk(sim, d.diskId ?? '');
      if (seen.has(disk.id.toLowerCase())) {
        throw invalidParameter(`Disk ${disk.id} is specified more than once in the storage profile of VM '${vmName}'.`, 'dataDisks');
      }
      seen.add(disk.id.toLowerCase());
      checkDiskUsable(sim, disk, vmKey, vmName, location);
      dataDisks.push({ spec: d, disk });
    } else {
      const name = d.name ?? `${vmName}_disk${d.lun + 2}_${hex(16)}`;
      const newId = key(resourceId(sim.subscriptionId, rgName, COMPUTE, 'disks', name));
      const clash = sim.state.disks[newId];
      if (clash) {
        if (clash.managedBy !== vmKey) {
          throw new ArmError(
            409,
            'Conflict',
            `Disk '${name}' already exists in resource group '${rgName}'. Attach it with createOption 'Attach'.`,
          );
        }
        dataDisks.push({ spec: d, disk: clash });
      } else {
        dataDisks.push({ spec: d, create: { name, sizeGB: d.diskSizeGB ?? 0, sku: d.storageAccountType ?? 'Standard_LRS' } });
      }
    }
  }
  if (dataDisks.length > size.maxDataDiskCount) {
    throw operationNotAllowed(`The maximum number of data disks allowed to be attached to a VM of this size is ${size.maxDataDiskCount}.`);
  }

  if (spec.nics.length === 0) {
    throw invalidParameter(`Virtual machine ${vmName} must have at least one network interface.`, 'networkProfile.networkInterfaces');
  }
  if (spec.nics.length > size.maxNics) {
    throw operationNotAllowed(
      `The number of network interfaces for virtual machine ${vmName} exceeds the maximum allowed for the virtual machine size ${size.name}. The number of network interfaces is ${spec.nics.length} and the maximum allowed is ${size.maxNics}.`,
    );
  }
  const nicIds = new Set<string>();
  for (const n of spec.nics) {
    if (nicIds.has(n.id))
      throw invalidParameter(`Network interface ${n.id} is referenced more than once by VM '${vmName}'.`, 'networkProfile');
    nicIds.add(n.id);
    sim.settleResource(n.id);
    const nic = sim.state.nics[n.id];
    if (!nic) throw new ArmError(404, 'NotFound', `Resource ${n.id} was not found.`);
    if (nic.virtualMachineId && nic.virtualMachineId !== vmKey) {
      throw new ArmError(
        400,
        'NicInUse',
        `Network Interface ${nic.id} is used by existing resource ${sim.state.vms[nic.virtualMachineId]?.id ?? nic.virtualMachineId}. In order to use this network interface, first remove it from that resource.`,
      );
    }
    if (nic.location !== location) {
      throw invalidParameter(
        `Network interface ${nic.id} is in location '${nic.location}'; it can only be used by virtual machines in the same location, not '${location}'.`,
        'networkProfile',
      );
    }
  }
  if (spec.nics.length > 1 && spec.nics.filter((n) => n.primary === true).length !== 1) {
    throw invalidParameter(`Virtual machine ${vmName} must have one network interface set as the primary.`, 'networkProfile');
  }
  if (existing && existing.powerState !== 'deallocated') {
    const before = existing.nics
      .map((n) => n.id)
      .sort()
      .join('|');
    if (before !== [...nicIds].sort().join('|')) {
      throw operationNotAllowed(
        `Network interfaces of virtual machine ${vmName} can only be added or removed while the VM is deallocated.`,
      );
    }
  }

  if (!existing || existing.vmSize.toLowerCase() !== size.name.toLowerCase()) {
    const usage = sim.coreUsage(location, vmKey);
    const famUsed = usage.families[size.family] ?? 0;
    const famLimit = sim.familyLimit(size.family);
    if (famUsed + size.vCPUs > famLimit) {
      throw sim.quotaError(size.family, size.familyDisplay, location, famLimit, famUsed, size.vCPUs);
    }
    if (usage.total + size.vCPUs > sim.settings.quotas.regionalVCpus) {
      throw sim.quotaError(undefined, 'Total Regional vCPUs', location, sim.settings.quotas.regionalVCpus, usage.total, size.vCPUs);
    }
  }
  return { size, osType, generation, osDisk, dataDisks };
}

function listSizes(): string {
  // Kept short like CRP's list; the full set is in sizes.ts.
  return ['Standard_B1s', 'Standard_B2s', 'Standard_D2s_v3', 'Standard_D4s_v3', 'Standard_DS1_v2', 'Standard_A1_v2', '...'].join(',');
}

function lookupDisk(sim: SimContext, diskKey: string): DiskRec {
  sim.settleResource(diskKey);
  const disk = sim.state.disks[diskKey];
  if (!disk) {
    const p = parseResourceId(diskKey);
    throw new ArmError(
      404,
      'NotFound',
      `Disk ${p?.name ?? diskKey} in resource group ${p?.resourceGroup ?? '?'} was not found (managed disk id ${diskKey}).`,
    );
  }
  return disk;
}

function checkDiskUsable(sim: SimContext, disk: DiskRec, vmKey: string, vmName: string, location: string): void {
  if (disk.managedBy && disk.managedBy !== vmKey) {
    const owner = sim.state.vms[disk.managedBy];
    throw operationNotAllowed(
      `Cannot attach disk '${disk.name}' to VM '${vmName}' because it is already attached to VM '${owner?.id ?? disk.managedBy}'. A disk can be attached to only one VM at a time.`,
    );
  }
  if (disk.managedBy !== vmKey && activeGrant(disk)) {
    throw operationNotAllowed(
      `Cannot attach disk '${disk.name}' to VM '${vmName}' because the disk is in state 'ActiveSAS'. Revoke access to the disk (endGetAccess) first.`,
    );
  }
  if (disk.location !== location) {
    throw invalidParameter(
      `Disk ${disk.id} is in location '${disk.location}' and cannot be attached to a virtual machine in location '${location}'.`,
      'storageProfile',
    );
  }
  if (disk.provisioningState !== 'Succeeded' && disk.provisioningState !== 'Updating') {
    throw operationNotAllowed(`Disk '${disk.name}' is in provisioning state '${disk.provisioningState}' and cannot be attached.`);
  }
}

export function diskRefsFromPlan(sim: SimContext, vmKey: string, rgName: string, location: string, plan: VmPlan): VmDiskRef[] {
  return plan.dataDisks.map(({ spec, disk, create }) => {
    let d = disk;
    if (!d && create) {
      const id = resourceId(sim.subscriptionId, rgName, COMPUTE, 'disks', create.name);
      d = {
        id,
        name: create.name,
        resourceGroup: rgName,
        location,
        skuName: create.sku,
        createOption: 'Empty',
        diskSizeGB: create.sizeGB,
        diskSizeBytes: create.sizeGB * GiB,
        uniqueId: uuid(),
        timeCreated: nowIso(),
        provisioningState: 'Succeeded',
      };
      sim.disks.createEmpty(d);
      sim.state.disks[key(id)] = d;
    }
    if (!d) throw new Error('unreachable: data disk plan without disk');
    d.managedBy = vmKey;
    return {
      lun: spec.lun,
      diskId: key(d.id),
      name: d.name,
      createOption: create ? 'Empty' : spec.createOption === 'Empty' ? 'Empty' : 'Attach',
      caching: spec.caching,
      deleteOption: spec.deleteOption,
    };
  });
}

/** The VM's reference to the OS disk the plan resolved (always attached: the disk exists first). */
export function osDiskRef(plan: VmPlan, spec: VmSpec): VmRec['osDisk'] {
  return {
    diskId: key(plan.osDisk.id),
    name: plan.osDisk.name,
    createOption: 'Attach',
    caching: spec.osDisk.caching,
    deleteOption: spec.osDisk.deleteOption,
    osType: plan.osType,
  };
}
