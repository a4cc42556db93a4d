import { normLocation } from './common';
import type { SimContext } from './context';
import { createNicRecord } from './providers/nics';
import { findVmSize } from './sizes';
import { key, type DiskRec, type HyperVGeneration, type OsType, type VmRec } from './state';
import { hex, nowIso, resourceId, uuid } from './util';
import { GiB } from '../../domain/units';

export interface SeedVm {
  name: string;
  osType: OsType;
  vmSize: string;
  powerState: 'running' | 'stopped' | 'deallocated';
  hyperVGeneration?: HyperVGeneration;
  osDiskSizeGB?: number;
  tags?: Record<string, string>;
}

export interface SeedOptions {
  resourceGroup: string;
  location: string;
  vnet: string;
  subnet: string;
  storageAccount: string;
  /** Defaults 10.20.0.0/16 and 10.20.1.0/24. */
  vnetAddressPrefix?: string;
  subnetAddressPrefix?: string;
  vms?: SeedVm[];
  /** Names of the per-location restore proxy and helper appliance VMs; defaults derive from the location. */
  proxyVmName?: string;
  helperVmName?: string;
  applianceVmSize?: string;
}

export interface BlobBackend {
  /** Blob service URL including the account for Azurite, e.g. http://127.0.0.1:10000/devstoreaccount1 */
  endpoint: string;
  accountName: string;
  accountKey: string;
}

/** Points every storage account at the current blob backend (Azurite's port may change between runs). */
export function bindStorageAccounts(sim: SimContext, blob: BlobBackend): void {
  const endpoint = blob.endpoint.endsWith('/') ? blob.endpoint : `${blob.endpoint}/`;
  for (const a of Object.values(sim.state.storageAccounts)) {
    a.blobEndpoint = endpoint;
    a.blobAccountName = blob.accountName;
    a.blobAccountKey = blob.accountKey;
  }
}

/** Creates whatever of the seed is missing; existing resources (and their state) are left as they are. */
export function applySeed(sim: SimContext, seed: SeedOptions, blob: BlobBackend): void {
  const st = sim.state;
  const sub = sim.subscriptionId;
  const location = normLocation(seed.location);
  const rgKey = key(seed.resourceGroup);
  if (!st.resourceGroups[rgKey]) {
    st.resourceGroups[rgKey] = {
      id: `/subscriptions/${sub}/resourceGroups/${seed.resourceGroup}`,
      name: seed.resourceGroup,
      location,
    };
  }
  const rg = st.resourceGroups[rgKey].name;

  const vnetId = resourceId(sub, rg, 'Microsoft.Network', 'virtualNetworks', seed.vnet);
  const vnetPrefix = seed.vnetAddressPrefix ?? '10.20.0.0/16';
  const subnetPrefix = seed.subnetAddressPrefix ?? '10.20.1.0/24';
  let vnet = st.vnets[key(vnetId)];
  if (!vnet) {
    vnet = {
      id: vnetId,
      name: seed.vnet,
      resourceGroup: rg,
      location,
      addressPrefixes: [vnetPrefix],
      subnets: [],
      resourceGuid: uuid(),
      provisioningState: 'Succeeded',
    };
    st.vnets[key(vnetId)] = vnet;
  }
  if (!vnet.subnets.some((s) => s.name.toLowerCase() === seed.subnet.toLowerCase())) {
    vnet.subnets.push({ name: seed.subnet, addressPrefix: subnetPrefix });
  }
  const subnetId = `${vnet.id}/subnets/${seed.subnet}`;

  const saId = resourceId(sub, rg, 'Microsoft.Storage', 'storageAccounts', seed.storageAccount);
  if (!st.storageAccounts[key(saId)]) {
    st.storageAccounts[key(saId)] = {
      id: saId,
      name: seed.storageAccount,
      resourceGroup: rg,
      location,
      blobEndpoint: '',
      blobAccountName: blob.accountName,
      blobAccountKey: blob.accountKey,
    };
  }
  bindStorageAccounts(sim, blob);

  const appliances: SeedVm[] = [
    {
      name: seed.proxyVmName ?? `vmrestore-proxy-${location}`,
      osType: 'Linux',
      vmSize: seed.applianceVmSize ?? 'Standard_B2s',
      powerState: 'deallocated',
      tags: { 'vmrestore-role': 'proxy' },
    },
    {
      name: seed.helperVmName ?? `vmrestore-helper-${location}`,
      osType: 'Linux',
      vmSize: seed.applianceVmSize ?? 'Standard_B2s',
      powerState: 'deallocated',
      tags: { 'vmrestore-role': 'helper' },
    },
  ];
  for (const vm of [...(seed.vms ?? []), ...appliances]) seedVm(sim, rg, location, subnetId, vm);
  sim.save();
}

function seedVm(sim: SimContext, rg: string, location: string, subnetId: string, spec: SeedVm): void {
  const st = sim.state;
  const sub = sim.subscriptionId;
  const id = resourceId(sub, rg, 'Microsoft.Compute', 'virtualMachines', spec.name);
  const k = key(id);
  if (st.vms[k]) return;
  const size = findVmSize(spec.vmSize);
  if (!size) throw new Error(`seed VM ${spec.name}: unknown VM size ${spec.vmSize}`);
  const gen = spec.hyperVGeneration ?? 'V1';
  const diskName = `${spec.name}_OsDisk_1_${hex(16)}`;
  const diskId = resourceId(sub, rg, 'Microsoft.Compute', 'disks', diskName);
  const sizeGB = spec.osDiskSizeGB ?? (spec.osType === 'Windows' ? 127 : 30);
  const disk: DiskRec = {
    id: diskId,
    name: diskName,
    resourceGroup: rg,
    location,
    skuName: 'StandardSSD_LRS',
    osType: spec.osType,
    hyperVGeneration: gen,
    createOption: 'Empty',
    diskSizeGB: sizeGB,
    diskSizeBytes: sizeGB * GiB,
    uniqueId: uuid(),
    timeCreated: nowIso(),
    provisioningState: 'Succeeded',
    managedBy: k,
  };
  st.disks[key(diskId)] = disk;
  const nic = createNicRecord(sim, rg, `${spec.name}-nic`, location, subnetId, spec.tags);
  nic.virtualMachineId = k;
  const vm: VmRec = {
    id,
    name: spec.name,
    resourceGroup: rg,
    location,
    tags: spec.tags,
    vmId: uuid(),
    vmSize: size.name,
    osType: spec.osType,
    hyperVGeneration: gen,
    osDisk: {
      diskId: key(diskId),
      name: diskName,
      createOption: 'Attach',
      caching: 'ReadWrite',
      deleteOption: 'Detach',
      osType: spec.osType,
    },
    dataDisks: [],
    nics: [{ id: key(nic.id), primary: true }],
    powerState: spec.powerState,
    provisioningState: 'Succeeded',
    timeCreated: nowIso(),
  };
  st.vms[k] = vm;
}
