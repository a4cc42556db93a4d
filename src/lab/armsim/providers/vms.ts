/** Microsoft.Compute/virtualMachines: the routes of a VM and its actions, and its operations' completion. */

import { checkPutPreconditions, methodNotAllowed, type Reply, type ReqCtx, unknownRoute } from '../common';
import { resourceNotFound } from '../errors';
import { VM_SIZES } from '../sizes';
import type { OperationRec, VmRec } from '../state';
import { checkResourceName, mergePatch, objectAt } from '../util';
import type { SimContext } from '../context';
import { COMPUTE } from './compute-common';
import { parseVmBody } from './vm-model';
import { createVm, deleteVm, updateVm } from './vm-write';
import { powerOp } from './power';
import { runCommand } from './run-command';
import { attachDetach } from './attach-detach';
import { renderInstanceView, renderStorageProfile, renderVm, renderVmSize, vmAgentCheck } from './vm-render';
import type { ResourceProvider } from '../context';
import { inResourceGroup } from '../common';

async function vmsRoute(sim: SimContext, ctx: ReqCtx, rg: string, name: string, rest: string[]): Promise<Reply> {
  const { rgName, id, k } = sim.itemTarget(ctx, rg, name, COMPUTE, 'virtualMachines');
  const existing = sim.state.vms[k];
  const need = (): VmRec => {
    if (!existing) throw resourceNotFound('Microsoft.Compute/virtualMachines', name, rgName);
    return existing;
  };
  if (rest.length === 0) {
    switch (ctx.method) {
      case 'GET': {
        const expand = ctx.query.get('$expand')?.toLowerCase();
        const vm = need();
        if (expand !== 'instanceview') return { status: 200, body: renderVm(sim, vm, false) };
        return { status: 200, body: renderVm(sim, vm, true, await vmAgentCheck(sim, vm)) };
      }
      case 'PUT': {
        checkResourceName(name, 'virtualMachines');
        checkPutPreconditions(ctx, existing);
        const body = objectAt(ctx.body, 'body');
        const spec = parseVmBody(body, existing);
        if (existing) return updateVm(sim, ctx, existing, spec, 'vmPut');
        return createVm(sim, ctx, id, rgName, name, spec);
      }
      case 'PATCH': {
        const vm = need();
        const merged = objectAt(mergePatch(renderVm(sim, vm, false), ctx.body), 'body');
        merged.location = vm.location;
        return updateVm(sim, ctx, vm, parseVmBody(merged, vm), 'vmPut');
      }
      case 'DELETE':
        if (!existing) return { status: 204 };
        return deleteVm(sim, ctx, existing);
      default:
        throw methodNotAllowed(ctx);
    }
  }
  if (rest.length !== 1) throw unknownRoute(ctx);
  const action = rest[0];
  if (ctx.method === 'GET') {
    if (action === 'instanceview') {
      const vm = need();
      return { status: 200, body: renderInstanceView(sim, vm, await vmAgentCheck(sim, vm)) };
    }
    if (action === 'vmsizes') {
      const vm = need();
      const gen = vm.hyperVGeneration;
      return { status: 200, body: { value: VM_SIZES.filter((z) => z.generations.includes(gen)).map(renderVmSize) } };
    }
    throw unknownRoute(ctx);
  }
  if (ctx.method !== 'POST') throw methodNotAllowed(ctx);
  switch (action) {
    case 'start':
      return powerOp(sim, ctx, need(), 'start');
    case 'poweroff':
      return powerOp(sim, ctx, need(), 'powerOff');
    case 'deallocate':
      return powerOp(sim, ctx, need(), 'deallocate');
    case 'restart':
      return powerOp(sim, ctx, need(), 'restart');
    case 'runcommand':
      return runCommand(sim, ctx, need());
    case 'attachdetachdatadisks':
      return attachDetach(sim, ctx, need());
    default:
      throw unknownRoute(ctx);
  }
}

function completeOperation(sim: SimContext, op: OperationRec, failed: boolean): void {
  const st = sim.state;
  const vm = st.vms[op.resourceKey];
  if (!vm) return;
  const release = () => {
    const inUse = new Set([vm.osDisk.diskId, ...vm.dataDisks.map((d) => d.diskId)]);
    for (const id of op.releaseDiskIds ?? []) {
      const d = st.disks[id];
      if (d && d.managedBy === op.resourceKey && (!st.vms[op.resourceKey] || !inUse.has(id))) delete d.managedBy;
    }
    const nicsInUse = new Set(vm.nics.map((n) => n.id));
    for (const id of op.releaseNicIds ?? []) {
      const n = st.nics[id];
      if (n && n.virtualMachineId === op.resourceKey && (!st.vms[op.resourceKey] || !nicsInUse.has(id))) delete n.virtualMachineId;
    }
  };
  switch (op.kind) {
    case 'vmPut':
    case 'vmAttachDetach':
      if (failed) {
        vm.provisioningState = 'Failed';
        vm.lastFailureCode = op.error?.code;
        vm.powerState = op.previousPower ?? 'deallocated';
      } else {
        vm.provisioningState = 'Succeeded';
        delete vm.lastFailureCode;
        if (op.targetPower) vm.powerState = op.targetPower;
      }
      release();
      sim.disks.syncDevices(vm, st.disks);
      op.result = op.kind === 'vmAttachDetach' ? renderStorageProfile(sim, vm) : renderVm(sim, vm, false);
      return;
    case 'vmPower':
      if (failed) {
        vm.powerState = op.previousPower ?? vm.powerState;
        vm.provisioningState = 'Failed';
        vm.lastFailureCode = op.error?.code;
      } else {
        vm.powerState = op.targetPower ?? vm.powerState;
        vm.provisioningState = 'Succeeded';
        delete vm.lastFailureCode;
      }
      sim.disks.syncDevices(vm, st.disks);
      return;
    case 'vmRunCommand':
      return;
    case 'vmDelete': {
      if (failed) {
        vm.provisioningState = 'Failed';
        vm.lastFailureCode = op.error?.code;
        return;
      }
      delete st.vms[op.resourceKey];
      release();
      sim.disks.removeDevices(vm.name);
      for (const id of op.deleteDiskIds ?? []) {
        const d = st.disks[id];
        if (d) sim.disks.remove(d);
        delete st.disks[id];
      }
      for (const id of op.deleteNicIds ?? []) delete st.nics[id];
      return;
    }
    default:
      return;
  }
}

export const vmsProvider: ResourceProvider = {
  type: 'microsoft.compute/virtualmachines',
  route: vmsRoute,
  list: (sim, rgName) =>
    Object.values(sim.state.vms)
      .filter(inResourceGroup(rgName))
      .map((v) => renderVm(sim, v, false)),
  completes: ['vmPut', 'vmDelete', 'vmPower', 'vmRunCommand', 'vmAttachDetach'],
  complete: completeOperation,
};
