/** Microsoft.Network/virtualNetworks and their subnets. */

import { methodNotAllowed, normLocation, type Reply, type ReqCtx, unknownRoute } from '../common';
import { ArmError, resourceNotFound } from '../errors';
import { key, type SubnetRec, type VnetRec } from '../state';
import { checkResourceName, type Json, objectAt, optArray, optObject, optString, optTags, parseCidr, uuid } from '../util';
import type { SimContext } from '../context';
import { NETWORK, requestFormat, usedAddresses } from './nics';
import type { ResourceProvider } from '../context';
import type { OperationRec } from '../state';
import { inResourceGroup } from '../common';

function vnetsRoute(sim: SimContext, ctx: ReqCtx, rg: string, name: string, restRaw: string[]): Reply {
  const { rgName, id, k } = sim.itemTarget(ctx, rg, name, NETWORK, 'virtualNetworks');
  const vnet = sim.state.vnets[k];
  const need = (): VnetRec => {
    if (!vnet) throw resourceNotFound('Microsoft.Network/virtualNetworks', name, rgName);
    return vnet;
  };
  if (restRaw.length === 0) {
    if (ctx.method === 'GET') return { status: 200, body: renderVnet(sim, need()) };
    if (ctx.method === 'PUT') {
      checkResourceName(name, 'virtualNetworks');
      return putVnet(sim, ctx, id, rgName, name, vnet);
    }
    throw methodNotAllowed(ctx);
  }
  if (restRaw[0].toLowerCase() !== 'subnets' || restRaw.length > 2) throw unknownRoute(ctx);
  const v = need();
  if (restRaw.length === 1) {
    if (ctx.method !== 'GET') throw methodNotAllowed(ctx);
    return { status: 200, body: { value: v.subnets.map((s) => renderSubnet(sim, v, s)) } };
  }
  const subnetName = restRaw[1];
  const subnet = v.subnets.find((s) => s.name.toLowerCase() === subnetName.toLowerCase());
  if (ctx.method === 'GET') {
    if (!subnet) throw resourceNotFound('Microsoft.Network/virtualNetworks/subnets', `${v.name}/${subnetName}`, rgName);
    return { status: 200, body: renderSubnet(sim, v, subnet) };
  }
  if (ctx.method === 'PUT') {
    const body = objectAt(ctx.body, 'body');
    const prefix = optString(objectAt(body.properties, 'properties').addressPrefix, 'addressPrefix');
    if (!prefix) throw requestFormat(`Subnet ${subnetName} must have an addressPrefix.`);
    checkSubnetPrefix(v, subnetName, prefix);
    if (subnet && subnet.addressPrefix === prefix) return { status: 200, body: renderSubnet(sim, v, subnet) };
    if (subnet) {
      if (subnetInUse(sim, v, subnet)) {
        throw new ArmError(400, 'InUseSubnetCannotBeUpdated', `Subnet ${subnet.name} is in use and its address prefix cannot be changed.`);
      }
      subnet.addressPrefix = prefix;
    } else {
      v.subnets.push({ name: subnetName, addressPrefix: prefix });
    }
    v.provisioningState = 'Updating';
    const op = sim.startOperation(ctx, { provider: NETWORK, location: v.location, kind: 'vnetPut', resourceKey: k, action: 'PUT' });
    sim.save();
    const sn = v.subnets.find((s) => s.name.toLowerCase() === subnetName.toLowerCase()) as SubnetRec;
    return { status: subnet ? 200 : 201, body: renderSubnet(sim, v, sn), headers: sim.operationHeaders(ctx, op, false) };
  }
  throw methodNotAllowed(ctx);
}

function checkSubnetPrefix(v: VnetRec, subnetName: string, prefix: string): void {
  const c = parseCidr(prefix);
  if (!c)
    throw new ArmError(400, 'InvalidAddressPrefixFormat', `Address prefix ${prefix} of subnet ${subnetName} is not formatted correctly.`);
  const inside = v.addressPrefixes.some((vp) => {
    const p = parseCidr(vp);
    return p !== undefined && c.base >= p.base && c.base + c.size <= p.base + p.size;
  });
  if (!inside) {
    throw new ArmError(
      400,
      'NetcfgSubnetRangeOutsideVnet',
      `Subnet '${subnetName}' is not valid because its IP address range is outside the IP address range of virtual network '${v.name}'.`,
    );
  }
}

function subnetInUse(sim: SimContext, v: VnetRec, s: SubnetRec): boolean {
  return usedAddresses(sim, key(`${v.id}/subnets/${s.name}`)).size > 0;
}

function putVnet(sim: SimContext, ctx: ReqCtx, id: string, rgName: string, name: string, existing: VnetRec | undefined): Reply {
  const body = objectAt(ctx.body, 'body');
  const location = optString(body.location, 'location');
  if (!location) throw new ArmError(400, 'LocationRequired', 'The location property is required for this definition.');
  const props = objectAt(body.properties, 'properties');
  const prefixes = (optArray(optObject(props.addressSpace, 'addressSpace')?.addressPrefixes, 'addressPrefixes') ?? []).map(String);
  if (prefixes.length === 0 || prefixes.some((p) => !parseCidr(p))) {
    throw new ArmError(
      400,
      'InvalidAddressPrefixFormat',
      `Virtual network ${name} needs valid address prefixes in addressSpace.addressPrefixes.`,
    );
  }
  const subnets: SubnetRec[] = (optArray(props.subnets, 'subnets') ?? []).map((r, i) => {
    const s = objectAt(r, `subnets[${i}]`);
    const sname = optString(s.name, `subnets[${i}].name`);
    const prefix = optString(objectAt(s.properties, 'properties').addressPrefix, 'addressPrefix');
    if (!sname || !prefix) throw requestFormat(`Subnet ${i} of virtual network ${name} needs a name and an addressPrefix.`);
    return { name: sname, addressPrefix: prefix };
  });
  const draft: VnetRec = {
    id,
    name,
    resourceGroup: rgName,
    location: normLocation(location),
    tags: optTags(body.tags),
    addressPrefixes: prefixes,
    subnets,
    resourceGuid: existing?.resourceGuid ?? uuid(),
    provisioningState: 'Updating',
  };
  for (const s of subnets) checkSubnetPrefix(draft, s.name, s.addressPrefix);
  if (existing) {
    for (const s of existing.subnets) {
      const kept = subnets.find((x) => x.name.toLowerCase() === s.name.toLowerCase());
      if ((!kept || kept.addressPrefix !== s.addressPrefix) && subnetInUse(sim, existing, s)) {
        throw new ArmError(
          400,
          'InUseSubnetCannotBeDeleted',
          `Subnet ${s.name} is in use by network interfaces and cannot be deleted or changed. In order to delete the subnet, delete all the resources within the subnet.`,
        );
      }
    }
  }
  const k = key(id);
  sim.state.vnets[k] = draft;
  const op = sim.startOperation(ctx, { provider: NETWORK, location: draft.location, kind: 'vnetPut', resourceKey: k, action: 'PUT' });
  sim.save();
  return { status: existing ? 200 : 201, body: renderVnet(sim, draft), headers: sim.operationHeaders(ctx, op, false) };
}

export function renderSubnet(sim: SimContext, v: VnetRec, s: SubnetRec): Json {
  const id = `${v.id}/subnets/${s.name}`;
  const ipConfigurations: Json[] = [];
  for (const nic of Object.values(sim.state.nics)) {
    for (const c of nic.ipConfigurations)
      if (key(c.subnetId) === key(id)) ipConfigurations.push({ id: `${nic.id}/ipConfigurations/${c.name}` });
  }
  return {
    id,
    name: s.name,
    type: 'Microsoft.Network/virtualNetworks/subnets',
    etag: `W/"${v.resourceGuid}"`,
    properties: {
      provisioningState: 'Succeeded',
      addressPrefix: s.addressPrefix,
      ipConfigurations,
      delegations: [],
      privateEndpointNetworkPolicies: 'Disabled',
      privateLinkServiceNetworkPolicies: 'Enabled',
    },
  };
}

export function renderVnet(sim: SimContext, v: VnetRec): Json {
  return {
    id: v.id,
    name: v.name,
    type: 'Microsoft.Network/virtualNetworks',
    location: v.location,
    tags: v.tags,
    etag: `W/"${v.resourceGuid}"`,
    properties: {
      provisioningState: v.provisioningState,
      resourceGuid: v.resourceGuid,
      addressSpace: { addressPrefixes: v.addressPrefixes },
      subnets: v.subnets.map((s) => renderSubnet(sim, v, s)),
      virtualNetworkPeerings: [],
      enableDdosProtection: false,
    },
  };
}

function completeVnetOperation(sim: SimContext, op: OperationRec, failed: boolean): void {
  const v = sim.state.vnets[op.resourceKey];
  if (!v) return;
  v.provisioningState = failed ? 'Failed' : 'Succeeded';
  op.result = renderVnet(sim, v);
}

export const vnetsProvider: ResourceProvider = {
  type: 'microsoft.network/virtualnetworks',
  // Subnet names keep the case they were sent in.
  route: (sim, ctx, rg, name, _rest, restRaw) => vnetsRoute(sim, ctx, rg, name, restRaw),
  list: (sim, rgName) =>
    Object.values(sim.state.vnets)
      .filter(inResourceGroup(rgName))
      .map((v) => renderVnet(sim, v)),
  completes: ['vnetPut'],
  complete: completeVnetOperation,
};
