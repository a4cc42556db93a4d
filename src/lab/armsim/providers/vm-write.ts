/** Creating, updating and deleting a VM (the record, its disks and NICs claimed or released). */

import { normLocation, type Reply, type ReqCtx } from '../common';
import { key, type VmRec } from '../state';
import { canonicalJson, nowIso, uuid } from '../util';
import type { SimContext } from '../context';
import { COMPUTE } from './compute-common';
import { diskRefsFromPlan, osDiskRef, planVm, type VmSpec } from './vm-model';
import { renderVm } from './vm-render';

export function createVm(sim: SimContext, ctx: ReqCtx, id: string, rgName: string, name: string, spec: VmSpec): Reply {
  const k = key(id);
  const plan = planVm(sim, k, name, rgName, spec, undefined);
  const location = normLocation(spec.location);
  const vm: VmRec = {
    id,
    name,
    resourceGroup: rgName,
    location,
    tags: spec.tags,
    vmId: uuid(),
    vmSize: plan.size.name,
    osType: plan.osType,
    hyperVGeneration: plan.generation,
    osDisk: osDiskRef(plan, spec),
    dataDisks: diskRefsFromPlan(sim, k, rgName, location, plan),
    nics: spec.nics,
    // Azure boots a VM as part of creating it.
    powerState: 'starting',
    provisioningState: 'Creating',
    timeCreated: nowIso(),
    extraProperties: Object.keys(spec.extraProperties).length ? spec.extraProperties : undefined,
  };
  plan.osDisk.managedBy = k;
  for (const n of spec.nics) sim.state.nics[n.id].virtualMachineId = k;
  sim.state.vms[k] = vm;
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location,
    kind: 'vmPut',
    resourceKey: k,
    action: 'PUT',
    targetPower: 'running',
  });
  sim.save();
  return { status: 201, body: renderVm(sim, vm, false), headers: sim.operationHeaders(ctx, op, false) };
}

function vmModel(vm: VmRec): unknown {
  return {
    tags: vm.tags ?? null,
    vmSize: vm.vmSize.toLowerCase(),
    osDisk: [vm.osDisk.diskId, vm.osDisk.caching, vm.osDisk.deleteOption],
    dataDisks: [...vm.dataDisks].sort((a, b) => (a.lun ?? 0) - (b.lun ?? 0)).map((d) => [d.lun, d.diskId, d.caching, d.deleteOption]),
    nics: vm.nics.map((n) => [n.id, n.primary ?? null, n.deleteOption ?? null]),
    extra: vm.extraProperties ?? {},
  };
}

export function updateVm(sim: SimContext, ctx: ReqCtx, vm: VmRec, spec: VmSpec, kind: 'vmPut' | 'vmAttachDetach'): Reply {
  const k = key(vm.id);
  const plan = planVm(sim, k, vm.name, vm.resourceGroup, spec, vm);
  const beforeDisks = new Set([vm.osDisk.diskId, ...vm.dataDisks.map((d) => d.diskId)]);
  const beforeNics = new Set(vm.nics.map((n) => n.id));
  const beforeModel = canonicalJson(vmModel(vm));

  // Build the new model on a copy first so that an unchanged PUT leaves everything untouched.
  const draft: VmRec = {
    ...vm,
    tags: spec.tags,
    vmSize: plan.size.name,
    osDisk: osDiskRef(plan, spec),
    dataDisks: plan.dataDisks.map(({ spec: d, disk, create }) => ({
      lun: d.lun,
      diskId: disk ? key(disk.id) : `new:${create?.name ?? ''}`,
      name: disk?.name ?? create?.name ?? '',
      createOption: d.createOption === 'Empty' ? 'Empty' : 'Attach',
      caching: d.caching,
      deleteOption: d.deleteOption,
    })),
    nics: spec.nics,
    extraProperties: Object.keys(spec.extraProperties).length ? spec.extraProperties : undefined,
  };
  const detaching = spec.dataDisks.some((d) => d.toBeDetached);
  if (!detaching && canonicalJson(vmModel(draft)) === beforeModel && vm.provisioningState === 'Succeeded' && kind === 'vmPut') {
    return { status: 200, body: renderVm(sim, vm, false) };
  }

  vm.tags = draft.tags;
  vm.vmSize = draft.vmSize;
  vm.osDisk = draft.osDisk;
  vm.osType = plan.osType;
  vm.dataDisks = diskRefsFromPlan(sim, k, vm.resourceGroup, vm.location, plan);
  vm.nics = spec.nics;
  vm.extraProperties = draft.extraProperties;
  plan.osDisk.managedBy = k;
  for (const n of spec.nics) sim.state.nics[n.id].virtualMachineId = k;
  const afterDisks = new Set([vm.osDisk.diskId, ...vm.dataDisks.map((d) => d.diskId)]);
  const afterNics = new Set(vm.nics.map((n) => n.id));
  const previousPower = vm.powerState;
  vm.provisioningState = 'Updating';
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: vm.location,
    kind,
    resourceKey: k,
    action: kind === 'vmPut' ? ctx.method : 'attachDetachDataDisks',
    previousPower,
    releaseDiskIds: [...beforeDisks].filter((d) => !afterDisks.has(d)),
    releaseNicIds: [...beforeNics].filter((n) => !afterNics.has(n)),
  });
  sim.save();
  if (kind === 'vmAttachDetach') return { status: 202, headers: sim.operationHeaders(ctx, op) };
  return { status: 200, body: renderVm(sim, vm, false), headers: sim.operationHeaders(ctx, op, false) };
}

export function deleteVm(sim: SimContext, ctx: ReqCtx, vm: VmRec): Reply {
  const k = key(vm.id);
  const disks = [vm.osDisk, ...vm.dataDisks];
  return sim.acceptDelete(ctx, vm, {
    provider: COMPUTE,
    kind: 'vmDelete',
    resourceKey: k,
    previousPower: vm.powerState,
    releaseDiskIds: disks.filter((d) => d.deleteOption !== 'Delete').map((d) => d.diskId),
    deleteDiskIds: disks.filter((d) => d.deleteOption === 'Delete').map((d) => d.diskId),
    releaseNicIds: vm.nics.filter((n) => n.deleteOption !== 'Delete').map((n) => n.id),
    deleteNicIds: vm.nics.filter((n) => n.deleteOption === 'Delete').map((n) => n.id),
  });
}
