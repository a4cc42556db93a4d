/** A VM's power operations: start, powerOff, deallocate, restart. */

import type { Reply, ReqCtx } from '../common';
import { activeGrant } from './disk-access';
import { operationNotAllowed } from '../errors';
import { key, type PowerState, type VmRec } from '../state';
import type { SimContext } from '../context';
import { COMPUTE } from './compute-common';

const TRANSITION: Record<string, { during: PowerState; target: PowerState }> = {
  start: { during: 'starting', target: 'running' },
  powerOff: { during: 'stopping', target: 'stopped' },
  deallocate: { during: 'deallocating', target: 'deallocated' },
  restart: { during: 'starting', target: 'running' },
};

export function powerOp(sim: SimContext, ctx: ReqCtx, vm: VmRec, action: 'start' | 'powerOff' | 'deallocate' | 'restart'): Reply {
  if (action === 'restart' && vm.powerState !== 'running') {
    throw operationNotAllowed(`Operation 'restart' is not allowed on VM '${vm.name}' since the VM is not running.`);
  }
  if (action === 'start' || action === 'restart') {
    const exported = [vm.osDisk, ...vm.dataDisks].map((r) => sim.state.disks[r.diskId]).find((d) => d && activeGrant(d));
    if (exported) {
      throw operationNotAllowed(
        `Cannot start VM '${vm.name}' because its disk '${exported.name}' is in state 'ActiveSAS'. Revoke access to the disk (endGetAccess) first.`,
      );
    }
  }
  const previous = vm.powerState;
  let { during, target } = TRANSITION[action];
  // Stopping a deallocated VM changes nothing: it stays deallocated.
  if (action === 'powerOff' && previous === 'deallocated') {
    during = 'deallocated';
    target = 'deallocated';
  }
  if (previous !== target || action === 'restart') vm.powerState = during;
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: vm.location,
    kind: 'vmPower',
    resourceKey: key(vm.id),
    action,
    targetPower: target,
    previousPower: previous,
  });
  sim.save();
  return { status: 202, headers: sim.operationHeaders(ctx, op) };
}
