/** Compensations: what this restore created (and only that, by its tag or blob metadata) deleted again. */
import type { AzurePlan } from '../../domain/azure';
import { deleteOwnedVhdBlob } from '../../azure/pageblob-ownership';
import type { AzureContext } from './context';
import { deleteOwned } from './ownership';

export function cleanupActivities(c: AzureContext) {
  const { clients, blobs } = c;
  return {
    async deleteAzureVm(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { compute } = clients();
      await deleteOwned(
        'VM',
        plan.vmName,
        plan,
        () => compute.virtualMachines.get(plan.resourceGroup, plan.vmName),
        () => compute.virtualMachines.delete(plan.resourceGroup, plan.vmName),
      );
    },
    async deleteNic(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { network } = clients();
      await deleteOwned(
        'network interface',
        plan.nicName,
        plan,
        () => network.networkInterfaces.get(plan.resourceGroup, plan.nicName),
        async () => network.networkInterfaces.delete(plan.resourceGroup, plan.nicName),
      );
    },
    async deleteManagedDisks(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { compute } = clients();
      for (const d of plan.disks) {
        await deleteOwned(
          'managed disk',
          d.managedDiskName,
          plan,
          () => compute.disks.get(plan.resourceGroup, d.managedDiskName),
          () => compute.disks.delete(plan.resourceGroup, d.managedDiskName),
        );
      }
    },
    /** Deletes the disk's VHD blob only if this restore's upload made it (its disk uuid is in the metadata). */
    async deleteVhdBlob(args: { plan: AzurePlan; diskIndex: number }): Promise<void> {
      const d = args.plan.disks.find((x) => x.diskIndex === args.diskIndex);
      if (d) await deleteOwnedVhdBlob(blobs().getPageBlobClient(d.blobName), args.plan.restoreId, d.diskIndex);
    },
  };
}
