/** The helper appliance: the restore's managed disks attached to it for preparation, and detached again. */
import type { AzurePlan } from '../../domain/azure';
import type { AzureContext } from './context';
import { armFailure } from './arm-errors';

export function helperActivities(c: AzureContext) {
  const { clients } = c;
  return {
    async attachToHelper(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const helper = plan.helper!;
      const { compute } = clients();
      const vm = await compute.virtualMachines.get(helper.resourceGroup, helper.vmName);
      const attached = new Set((vm.storageProfile?.dataDisks ?? []).map((d) => d.managedDisk?.id?.toLowerCase()));
      const toAttach = plan.disks.filter((d) => !attached.has(d.managedDiskId.toLowerCase()));
      if (toAttach.length === 0) return;
      try {
        await compute.virtualMachines.attachDetachDataDisks(helper.resourceGroup, helper.vmName, {
          dataDisksToAttach: toAttach.map((d) => ({ diskId: d.managedDiskId })),
        });
      } catch (err) {
        armFailure(`attaching disks to helper appliance '${helper.vmName}'`, err);
      }
    },
    async detachFromHelper(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const helper = plan.helper;
      if (!helper) return;
      const { compute } = clients();
      const vm = await compute.virtualMachines.get(helper.resourceGroup, helper.vmName);
      const attached = new Set((vm.storageProfile?.dataDisks ?? []).map((d) => d.managedDisk?.id?.toLowerCase()));
      const toDetach = plan.disks.filter((d) => attached.has(d.managedDiskId.toLowerCase()));
      if (toDetach.length === 0) return;
      try {
        await compute.virtualMachines.attachDetachDataDisks(helper.resourceGroup, helper.vmName, {
          dataDisksToDetach: toDetach.map((d) => ({ diskId: d.managedDiskId })),
        });
      } catch (err) {
        armFailure(`detaching disks from helper appliance '${helper.vmName}'`, err);
      }
    },
  };
}
