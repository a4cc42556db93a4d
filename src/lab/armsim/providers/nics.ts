/** Microsoft.Network/networkInterfaces, with addresses allocated from their subnet. */

import { checkPutPreconditions, methodNotAllowed, normLocation, type Reply, type ReqCtx, unknownRoute } from '../common';
import { ArmError, resourceNotFound } from '../errors';
import { key, type NicIpConfigRec, type NicRec, type SubnetRec, type VnetRec } from '../state';
import {
  canonicalJson,
  checkResourceName,
  enumValue,
  intToIp,
  ipInCidr,
  ipToInt,
  type Json,
  objectAt,
  optArray,
  optBoolean,
  optObject,
  optString,
  optTags,
  parseCidr,
  parseResourceId,
  randomMac,
  resourceId,
  uuid,
  withoutKeys,
} from '../util';
import type { SimContext } from '../context';
import type { ResourceProvider } from '../context';
import type { OperationRec } from '../state';
import { inResourceGroup } from '../common';

export const NETWORK = 'Microsoft.Network';

const NIC_MODELLED = ['ipConfigurations', 'enableAcceleratedNetworking'];

const NIC_READONLY = [
  'provisioningState',
  'resourceGuid',
  'macAddress',
  'virtualMachine',
  'primary',
  'hostedWorkloads',
  'tapConfigurations',
  'vnetEncryptionSupported',
  'privateEndpoint',
  'dscpConfiguration',
  'defaultOutboundConnectivityEnabled',
];

export function requestFormat(message: string): ArmError {
  return new ArmError(400, 'InvalidRequestFormat', message);
}

function nicsRoute(sim: SimContext, ctx: ReqCtx, rg: string, name: string, rest: string[]): Reply {
  const { rgName, id, k } = sim.itemTarget(ctx, rg, name, NETWORK, 'networkInterfaces');
  if (rest.length > 0) throw unknownRoute(ctx);
  const existing = sim.state.nics[k];
  switch (ctx.method) {
    case 'GET':
      if (!existing) throw resourceNotFound('Microsoft.Network/networkInterfaces', name, rgName);
      return { status: 200, body: renderNic(sim, existing) };
    case 'PUT':
      checkResourceName(name, 'networkInterfaces');
      checkPutPreconditions(ctx, existing, existing ? `W/"${existing.resourceGuid}"` : undefined);
      return putNic(sim, ctx, id, rgName, name, existing);
    case 'DELETE': {
      if (!existing) return { status: 204 };
      if (existing.virtualMachineId) {
        const vm = sim.state.vms[existing.virtualMachineId];
        throw new ArmError(
          400,
          'NicInUse',
          `Network Interface ${existing.id} is used by existing resource ${vm?.id ?? existing.virtualMachineId}. In order to delete the network interface, it must be dissociated from the resource. To learn more, see aka.ms/deletenic.`,
        );
      }
      return sim.acceptDelete(ctx, existing, { provider: NETWORK, kind: 'nicDelete', resourceKey: k });
    }
    default:
      throw methodNotAllowed(ctx);
  }
}

interface IpConfigSpec {
  name: string;
  subnetId: string;
  method: 'Dynamic' | 'Static';
  address?: string;
  primary?: boolean;
}

function putNic(sim: SimContext, ctx: ReqCtx, id: string, rgName: string, name: string, existing: NicRec | undefined): Reply {
  const body = objectAt(ctx.body, 'body');
  const location = optString(body.location, 'location');
  if (!location) throw new ArmError(400, 'LocationRequired', 'The location property is required for this definition.');
  const loc = normLocation(location);
  if (existing && existing.location !== loc) {
    throw new ArmError(
      409,
      'InvalidResourceLocation',
      `The resource '${name}' already exists in location '${existing.location}' in resource group '${rgName}'. A resource with the same name cannot be created in location '${loc}'. Please select a new resource name.`,
    );
  }
  const props = objectAt(body.properties, 'properties');
  const raw = optArray(props.ipConfigurations, 'ipConfigurations') ?? [];
  if (raw.length === 0) throw requestFormat(`Network interface ${id} must have at least one IP configuration.`);
  const specs: IpConfigSpec[] = raw.map((r, i) => {
    const c = objectAt(r, `ipConfigurations[${i}]`);
    const cname = optString(c.name, `ipConfigurations[${i}].name`);
    if (!cname) throw requestFormat(`IP configuration ${i} of network interface ${id} has no name.`);
    const cp = objectAt(c.properties, `ipConfigurations[${i}].properties`);
    const subnetId = optString(optObject(cp.subnet, 'subnet')?.id, `ipConfigurations[${i}].properties.subnet.id`);
    if (!subnetId) throw requestFormat(`IP configuration ${cname} of network interface ${id} must reference a subnet.`);
    const methodRaw = optString(cp.privateIPAllocationMethod, 'privateIPAllocationMethod');
    const method = enumValue(methodRaw, ['Dynamic', 'Static'] as const);
    if (methodRaw !== undefined && !method) throw requestFormat(`Invalid privateIPAllocationMethod '${methodRaw}'.`);
    return {
      name: cname,
      subnetId,
      method: method ?? 'Dynamic',
      address: optString(cp.privateIPAddress, 'privateIPAddress'),
      primary: optBoolean(cp.primary, 'primary'),
    };
  });
  const names = new Set<string>();
  for (const s of specs) {
    if (names.has(s.name.toLowerCase())) throw requestFormat(`IP configuration name ${s.name} is used more than once.`);
    names.add(s.name.toLowerCase());
  }
  if (specs.length > 1 && specs.filter((s) => s.primary === true).length !== 1) {
    throw requestFormat(`Network interface ${id} has multiple IP configurations; exactly one of them must be primary.`);
  }

  const ipConfigurations: NicIpConfigRec[] = [];
  const taken = new Set<number>();
  for (const s of specs) {
    const { vnet, subnet } = lookupSubnet(sim, s.subnetId, id, loc);
    const subnetKey = key(`${vnet.id}/subnets/${subnet.name}`);
    const prefix = parseCidr(subnet.addressPrefix);
    if (!prefix) throw new ArmError(400, 'InvalidAddressPrefixFormat', `Subnet ${subnet.name} has an invalid address prefix.`);
    const used = usedAddresses(sim, subnetKey, key(id));
    for (const t of taken) used.set(t, id);
    const previous = existing?.ipConfigurations.find((c) => c.name.toLowerCase() === s.name.toLowerCase() && key(c.subnetId) === subnetKey);
    let address: string;
    if (s.method === 'Static') {
      if (!s.address) throw requestFormat(`IP configuration ${s.name} uses Static allocation but has no privateIPAddress.`);
      if (!ipInCidr(s.address, subnet.addressPrefix)) {
        throw new ArmError(
          400,
          'PrivateIPAddressNotInSubnet',
          `Private static IP address ${s.address} does not belong to the range of subnet prefix ${subnet.addressPrefix}.`,
        );
      }
      const n = ipToInt(s.address);
      if (n < prefix.base + 4 || n === prefix.base + prefix.size - 1) {
        throw new ArmError(
          400,
          'PrivateIPAddressIsReserved',
          `IP address ${s.address} is reserved for Azure in subnet ${subnet.name} (the first four and the last address of a subnet).`,
        );
      }
      const owner = used.get(n);
      if (owner) {
        throw new ArmError(
          400,
          'PrivateIPAddressInUse',
          `IP configuration ${id}/ipConfigurations/${s.name} is using the private IP address ${s.address} which is already allocated to resource ${owner}.`,
        );
      }
      address = s.address;
    } else if (previous && previous.privateIPAllocationMethod === 'Dynamic') {
      address = previous.privateIPAddress;
    } else {
      let n = prefix.base + 4;
      const last = prefix.base + prefix.size - 2;
      while (n <= last && used.has(n)) n++;
      if (n > last) {
        throw new ArmError(
          400,
          'SubnetIsFull',
          `Subnet ${subnet.name} with address prefix ${subnet.addressPrefix} does not have enough capacity for 1 IP addresses.`,
        );
      }
      address = intToIp(n);
    }
    taken.add(ipToInt(address));
    ipConfigurations.push({
      name: s.name,
      subnetId: `${vnet.id}/subnets/${subnet.name}`,
      privateIPAddress: address,
      privateIPAllocationMethod: s.method,
      primary: specs.length === 1 ? true : s.primary === true,
    });
  }
  const extra = withoutKeys(props, [...NIC_MODELLED, ...NIC_READONLY]);
  const model = {
    tags: optTags(body.tags),
    ipConfigurations,
    enableAcceleratedNetworking: optBoolean(props.enableAcceleratedNetworking, 'enableAcceleratedNetworking') ?? false,
    extraProperties: Object.keys(extra).length ? extra : undefined,
  };
  const k = key(id);
  if (existing) {
    const before = {
      tags: existing.tags,
      ipConfigurations: existing.ipConfigurations,
      enableAcceleratedNetworking: existing.enableAcceleratedNetworking,
      extraProperties: existing.extraProperties,
    };
    if (canonicalJson(before) === canonicalJson(model) && existing.provisioningState === 'Succeeded') {
      return { status: 200, body: renderNic(sim, existing) };
    }
    Object.assign(existing, model);
    existing.provisioningState = 'Updating';
    const op = sim.startOperation(ctx, { provider: NETWORK, location: loc, kind: 'nicPut', resourceKey: k, action: 'PUT' });
    sim.save();
    return { status: 200, body: renderNic(sim, existing), headers: sim.operationHeaders(ctx, op, false) };
  }
  const rec: NicRec = {
    id,
    name,
    resourceGroup: rgName,
    location: loc,
    ...model,
    macAddress: randomMac(),
    resourceGuid: uuid(),
    provisioningState: 'Updating',
  };
  sim.state.nics[k] = rec;
  const op = sim.startOperation(ctx, { provider: NETWORK, location: loc, kind: 'nicPut', resourceKey: k, action: 'PUT' });
  sim.save();
  return { status: 201, body: renderNic(sim, rec), headers: sim.operationHeaders(ctx, op, false) };
}

function lookupSubnet(sim: SimContext, subnetId: string, referencedBy: string, location: string): { vnet: VnetRec; subnet: SubnetRec } {
  const notFound = () =>
    new ArmError(
      400,
      'InvalidResourceReference',
      `Resource ${subnetId} referenced by resource ${referencedBy} was not found. Please make sure that the referenced resource exists, and that both resources are in the same region.`,
      { details: [{ code: 'NotFound', message: `Resource ${subnetId} not found.` }] },
    );
  const p = parseResourceId(subnetId);
  if (!p || p.children.length !== 1 || p.children[0].type.toLowerCase() !== 'subnets') throw notFound();
  const vnet = sim.state.vnets[key(resourceId(p.subscriptionId, p.resourceGroup, p.provider, p.type, p.name))];
  const subnet = vnet?.subnets.find((s) => s.name.toLowerCase() === p.children[0].name.toLowerCase());
  if (!vnet || !subnet || vnet.location !== location) throw notFound();
  return { vnet, subnet };
}

/** Addresses in use in a subnet, mapped to the id of the NIC holding them. */
export function usedAddresses(sim: SimContext, subnetKey: string, exceptNicKey?: string): Map<number, string> {
  const used = new Map<number, string>();
  for (const [k, nic] of Object.entries(sim.state.nics)) {
    if (k === exceptNicKey) continue;
    for (const c of nic.ipConfigurations) if (key(c.subnetId) === subnetKey) used.set(ipToInt(c.privateIPAddress), nic.id);
  }
  return used;
}

export function renderNic(sim: SimContext, n: NicRec): Json {
  const vm = n.virtualMachineId ? sim.state.vms[n.virtualMachineId] : undefined;
  const props: Json = {
    ...(n.extraProperties ?? {}),
    provisioningState: n.provisioningState,
    resourceGuid: n.resourceGuid,
    ipConfigurations: n.ipConfigurations.map((c) => ({
      id: `${n.id}/ipConfigurations/${c.name}`,
      name: c.name,
      type: 'Microsoft.Network/networkInterfaces/ipConfigurations',
      properties: {
        provisioningState: n.provisioningState === 'Deleting' ? 'Deleting' : 'Succeeded',
        privateIPAddress: c.privateIPAddress,
        privateIPAllocationMethod: c.privateIPAllocationMethod,
        subnet: { id: c.subnetId },
        primary: c.primary,
        privateIPAddressVersion: 'IPv4',
      },
    })),
    dnsSettings: { dnsServers: [], appliedDnsServers: [] },
    macAddress: n.macAddress,
    enableAcceleratedNetworking: n.enableAcceleratedNetworking,
    enableIPForwarding: false,
    vnetEncryptionSupported: false,
    hostedWorkloads: [],
    tapConfigurations: [],
    nicType: 'Standard',
  };
  if (vm) {
    props.virtualMachine = { id: vm.id };
    const ref = vm.nics.find((x) => x.id === key(n.id));
    props.primary = vm.nics.length === 1 || ref?.primary === true;
  }
  return {
    id: n.id,
    name: n.name,
    type: 'Microsoft.Network/networkInterfaces',
    location: n.location,
    tags: n.tags,
    etag: `W/"${n.resourceGuid}"`,
    properties: props,
  };
}

/** Creates a NIC directly (seeding), with the first free dynamic address of the subnet. */
export function createNicRecord(
  sim: SimContext,
  rgName: string,
  name: string,
  location: string,
  subnetId: string,
  tags?: Record<string, string>,
): NicRec {
  const id = resourceId(sim.subscriptionId, rgName, NETWORK, 'networkInterfaces', name);
  const existing = sim.state.nics[key(id)];
  if (existing) return existing;
  const { vnet, subnet } = lookupSubnet(sim, subnetId, id, normLocation(location));
  const subnetFull = `${vnet.id}/subnets/${subnet.name}`;
  const prefix = parseCidr(subnet.addressPrefix);
  if (!prefix) throw new Error(`subnet ${subnetFull} has a bad prefix`);
  const used = usedAddresses(sim, key(subnetFull));
  let n = prefix.base + 4;
  while (used.has(n)) n++;
  const rec: NicRec = {
    id,
    name,
    resourceGroup: rgName,
    location: normLocation(location),
    tags,
    ipConfigurations: [
      { name: 'ipconfig1', subnetId: subnetFull, privateIPAddress: intToIp(n), privateIPAllocationMethod: 'Dynamic', primary: true },
    ],
    macAddress: randomMac(),
    enableAcceleratedNetworking: false,
    resourceGuid: uuid(),
    provisioningState: 'Succeeded',
  };
  sim.state.nics[key(id)] = rec;
  return rec;
}

function completeNicOperation(sim: SimContext, op: OperationRec, failed: boolean): void {
  const nic = sim.state.nics[op.resourceKey];
  if (!nic) return;
  if (op.kind === 'nicDelete' && !failed) {
    delete sim.state.nics[op.resourceKey];
    return;
  }
  nic.provisioningState = failed ? 'Failed' : 'Succeeded';
  op.result = renderNic(sim, nic);
}

export const nicsProvider: ResourceProvider = {
  type: 'microsoft.network/networkinterfaces',
  route: nicsRoute,
  list: (sim, rgName) =>
    Object.values(sim.state.nics)
      .filter(inResourceGroup(rgName))
      .map((n) => renderNic(sim, n)),
  completes: ['nicPut', 'nicDelete'],
  complete: completeNicOperation,
};
