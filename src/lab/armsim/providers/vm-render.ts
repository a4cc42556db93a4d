/** How a VM, its storage profile and its instance view read back. */

import { type AgentCheck, type AgentProbe, agentProbeFor } from '../agent';
import type { VmSizeInfo } from '../sizes';
import type { PowerState, VmDiskRef, VmRec } from '../state';
import { type Json, nowIso } from '../util';
import type { SimContext } from '../context';

export function renderStorageProfile(sim: SimContext, vm: VmRec): Json {
  const ref = (d: VmDiskRef): Json => {
    const disk = sim.state.disks[d.diskId];
    return {
      name: disk?.name ?? d.name,
      createOption: d.createOption,
      caching: d.caching,
      managedDisk: { id: disk?.id ?? d.diskId, storageAccountType: disk?.skuName ?? 'Standard_LRS' },
      deleteOption: d.deleteOption,
      diskSizeGB: disk?.diskSizeGB,
    };
  };
  return {
    osDisk: { osType: vm.osType, ...ref(vm.osDisk) },
    dataDisks: [...vm.dataDisks].sort((a, b) => (a.lun ?? 0) - (b.lun ?? 0)).map((d) => ({ lun: d.lun, ...ref(d), toBeDetached: false })),
    diskControllerType: 'SCSI',
  };
}

const agentProbes = new WeakMap<SimContext, AgentProbe>();

/** The VM agent's state as a running VM's guest would report it (only a running VM's agent reports). */
export async function vmAgentCheck(sim: SimContext, vm: VmRec): Promise<AgentCheck | undefined> {
  if (vm.powerState !== 'running') return undefined;
  let probe = agentProbes.get(sim);
  if (!probe) agentProbes.set(sim, (probe = agentProbeFor(sim.disks)));
  return probe.check(vm, sim.state.disks[vm.osDisk.diskId]);
}

export function renderVm(sim: SimContext, vm: VmRec, withInstanceView: boolean, agent?: AgentCheck): Json {
  const properties: Json = {
    ...(vm.extraProperties ?? {}),
    vmId: vm.vmId,
    hardwareProfile: { vmSize: vm.vmSize },
    storageProfile: renderStorageProfile(sim, vm),
    networkProfile: {
      networkInterfaces: vm.nics.map((n) => {
        const p: Json = {};
        if (n.primary !== undefined) p.primary = n.primary;
        if (n.deleteOption) p.deleteOption = n.deleteOption;
        const out: Json = { id: sim.state.nics[n.id]?.id ?? n.id };
        if (Object.keys(p).length) out.properties = p;
        return out;
      }),
    },
    provisioningState: vm.provisioningState,
    timeCreated: vm.timeCreated,
  };
  if (withInstanceView) properties.instanceView = renderInstanceView(sim, vm, agent);
  return { id: vm.id, name: vm.name, type: 'Microsoft.Compute/virtualMachines', location: vm.location, tags: vm.tags, properties };
}

const POWER_DISPLAY: Record<PowerState, string> = {
  running: 'VM running',
  stopped: 'VM stopped',
  deallocated: 'VM deallocated',
  starting: 'VM starting',
  stopping: 'VM stopping',
  deallocating: 'VM deallocating',
};

/**
 * `agent`: the result of vmAgentCheck for the VM; a running VM without one (or with a check that failed)
 * shows the agent as Azure does when no agent reports: Not Ready, "VM Agent is unresponsive.".
 */
export function renderInstanceView(sim: SimContext, vm: VmRec, agent?: AgentCheck): Json {
  const time = vm.timeCreated;
  const provisioning: Json =
    vm.provisioningState === 'Failed'
      ? {
          code: `ProvisioningState/failed/${vm.lastFailureCode ?? 'InternalExecutionError'}`,
          level: 'Error',
          displayStatus: 'Provisioning failed',
          time,
        }
      : {
          code: `ProvisioningState/${vm.provisioningState.toLowerCase()}`,
          level: 'Info',
          displayStatus: vm.provisioningState === 'Succeeded' ? 'Provisioning succeeded' : vm.provisioningState,
          time,
        };
  const diskStatus = (d: VmDiskRef): Json => ({
    name: sim.state.disks[d.diskId]?.name ?? d.name,
    statuses: [{ code: 'ProvisioningState/succeeded', level: 'Info', displayStatus: 'Provisioning succeeded', time }],
  });
  const view: Json = {
    hyperVGeneration: vm.hyperVGeneration,
    disks: [vm.osDisk, ...vm.dataDisks].map(diskStatus),
    statuses: [provisioning, { code: `PowerState/${vm.powerState}`, level: 'Info', displayStatus: POWER_DISPLAY[vm.powerState] }],
  };
  if (vm.powerState === 'running') {
    view.computerName = vm.name;
    view.vmAgent = agent?.ready
      ? {
          vmAgentVersion: '2.13.1.1',
          statuses: [
            {
              code: 'ProvisioningState/succeeded',
              level: 'Info',
              displayStatus: 'Ready',
              message: 'Guest Agent is running',
              time: nowIso(),
            },
          ],
        }
      : {
          vmAgentVersion: 'Unknown',
          statuses: [
            {
              code: 'ProvisioningState/Unavailable',
              level: 'Warning',
              displayStatus: 'Not Ready',
              message: 'VM Agent is unresponsive.',
              time: nowIso(),
            },
          ],
        };
  }
  return view;
}

export function renderVmSize(z: VmSizeInfo): Json {
  return {
    name: z.name,
    numberOfCores: z.vCPUs,
    osDiskSizeInMB: 1047552,
    resourceDiskSizeInMB: z.resourceDiskSizeInMB,
    memoryInMB: z.memoryInMB,
    maxDataDiskCount: z.maxDataDiskCount,
  };
}
