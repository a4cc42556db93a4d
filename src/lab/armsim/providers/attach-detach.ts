/** A VM's attachDetachDataDisks action. */

import type { Reply, ReqCtx } from '../common';
import { invalidParameter, missingParameter } from '../errors';
import { key, type VmRec } from '../state';
import { objectAt, optArray, optNumber, optString } from '../util';
import type { SimContext } from '../context';
import { CACHING, DELETE_OPTIONS, enumOrThrow } from './compute-common';
import { dataDiskSpecOf, type DataDiskSpec, type VmSpec } from './vm-model';
import { updateVm } from './vm-write';

export function attachDetach(sim: SimContext, ctx: ReqCtx, vm: VmRec): Reply {
  const body = objectAt(ctx.body, 'body');
  const attach = optArray(body.dataDisksToAttach, 'dataDisksToAttach') ?? [];
  const detach = optArray(body.dataDisksToDetach, 'dataDisksToDetach') ?? [];
  if (attach.length === 0 && detach.length === 0) {
    throw invalidParameter('At least one of dataDisksToAttach or dataDisksToDetach must be specified.', 'dataDisksToAttach');
  }
  let current: DataDiskSpec[] = vm.dataDisks.map(dataDiskSpecOf);
  for (const [i, raw] of detach.entries()) {
    const o = objectAt(raw, `dataDisksToDetach[${i}]`);
    const id = optString(o.diskId, `dataDisksToDetach[${i}].diskId`);
    if (!id) throw missingParameter('dataDisksToDetach.diskId');
    if (!current.some((d) => d.diskId === key(id))) {
      throw invalidParameter(`Disk ${id} is not attached to virtual machine '${vm.name}' as a data disk.`, 'dataDisksToDetach');
    }
    current = current.filter((d) => d.diskId !== key(id));
  }
  for (const [i, raw] of attach.entries()) {
    const o = objectAt(raw, `dataDisksToAttach[${i}]`);
    const id = optString(o.diskId, `dataDisksToAttach[${i}].diskId`);
    if (!id) throw missingParameter('dataDisksToAttach.diskId');
    let lun = optNumber(o.lun, `dataDisksToAttach[${i}].lun`);
    if (lun === undefined) {
      lun = 0;
      while (current.some((d) => d.lun === lun)) lun++;
    }
    current.push({
      lun,
      createOption: 'Attach',
      diskId: key(id),
      caching: enumOrThrow(optString(o.caching, 'caching'), CACHING, 'caching') ?? 'None',
      deleteOption: enumOrThrow(optString(o.deleteOption, 'deleteOption'), DELETE_OPTIONS, 'deleteOption') ?? 'Detach',
      toBeDetached: false,
    });
  }
  const spec: VmSpec = {
    location: vm.location,
    tags: vm.tags,
    vmSize: vm.vmSize,
    osDisk: { diskId: vm.osDisk.diskId, osType: vm.osType, caching: vm.osDisk.caching, deleteOption: vm.osDisk.deleteOption },
    dataDisks: current,
    nics: vm.nics.map((n) => ({ ...n })),
    extraProperties: vm.extraProperties ?? {},
  };
  return updateVm(sim, ctx, vm, spec, 'vmAttachDetach');
}
