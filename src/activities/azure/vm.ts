/** The restored VM: managed disks imported from the blobs, its NIC, the VM registered and powered on, its agent confirmed. */
import { Context } from '@temporalio/activity';
import type { AzurePlan } from '../../domain/azure';
import { FailureType, RestoreError } from '../../domain/errors';
import { blobUrlForRecord } from '../../azure/blob-url';
import type { AzureContext } from './context';
import { armFailure } from './arm-errors';
import { createOwned, RESTORE_TAG } from './ownership';

export function vmActivities(c: AzureContext) {
  const { azure, clients, powerState } = c;
  return {
    async createManagedDisks(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { compute } = clients();
      for (const d of plan.disks) {
        await createOwned(
          'managed disk',
          d.managedDiskName,
          plan,
          () => compute.disks.get(plan.resourceGroup, d.managedDiskName),
          (onlyIfAbsent) =>
            compute.disks.createOrUpdate(
              plan.resourceGroup,
              d.managedDiskName,
              {
                location: plan.location,
                tags: { [RESTORE_TAG]: plan.restoreId },
                sku: { name: 'Standard_LRS' },
                ...(d.os ? { osType: plan.osType, hyperVGeneration: plan.generation === 2 ? 'V2' : 'V1' } : {}),
                creationData: { createOption: 'Import', sourceUri: blobUrlForRecord(d.blobUrl), storageAccountId: plan.storageAccountId },
              },
              onlyIfAbsent ? { requestOptions: { headers: { 'If-None-Match': '*' } } } : {},
            ),
        );
      }
    },
    async createNic(args: { plan: AzurePlan }): Promise<void> {
      const { plan } = args;
      const { network } = clients();
      await createOwned(
        'network interface',
        plan.nicName,
        plan,
        () => network.networkInterfaces.get(plan.resourceGroup, plan.nicName),
        async (onlyIfAbsent) =>
          network.networkInterfaces.createOrUpdate(
            plan.resourceGroup,
            plan.nicName,
            {
              location: plan.location,
              tags: { [RESTORE_TAG]: plan.restoreId },
              ipConfigurations: [{ name: 'ipconfig1', subnet: { id: plan.subnetId } }],
            },
            onlyIfAbsent ? { requestOptions: { headers: { 'If-None-Match': '*' } } } : {},
          ),
      );
    },
    /** Registers the VM on the prepared disks and makes sure it runs. */
    async createAzureVm(args: { plan: AzurePlan }): Promise<{ vmId: string }> {
      const { plan } = args;
      const a = azure();
      const { compute } = clients();
      const nicId = `/subscriptions/${a.subscriptionId}/resourceGroups/${plan.resourceGroup}/providers/Microsoft.Network/networkInterfaces/${plan.nicName}`;
      const osDisk = plan.disks.find((d) => d.os)!;
      const vm = await createOwned(
        'VM',
        plan.vmName,
        plan,
        () => compute.virtualMachines.get(plan.resourceGroup, plan.vmName),
        (onlyIfAbsent) =>
          compute.virtualMachines.createOrUpdate(
            plan.resourceGroup,
            plan.vmName,
            {
              location: plan.location,
              tags: { [RESTORE_TAG]: plan.restoreId },
              hardwareProfile: { vmSize: plan.vmSize },
              storageProfile: {
                osDisk: { osType: plan.osType, createOption: 'Attach', managedDisk: { id: osDisk.managedDiskId } },
                dataDisks: plan.disks
                  .filter((d) => !d.os)
                  .map((d, i) => ({ lun: i, createOption: 'Attach', managedDisk: { id: d.managedDiskId } })),
              },
              networkProfile: { networkInterfaces: [{ id: nicId, primary: true }] },
            },
            onlyIfAbsent ? { ifNoneMatch: '*' } : {},
          ),
      );
      try {
        if ((await powerState(plan.resourceGroup, plan.vmName)) !== 'running')
          await compute.virtualMachines.start(plan.resourceGroup, plan.vmName);
      } catch (err) {
        armFailure(`starting VM '${plan.vmName}'`, err);
      }
      return { vmId: vm.vmId ?? vm.id ?? plan.vmName };
    },
    /** The staged agent installs from RunOnce at first boot; wait until Azure reports it ready. */
    async confirmAgentInstalled(args: { plan: AzurePlan }): Promise<boolean> {
      const { plan } = args;
      const deadline = Date.now() + 120_000;
      while (Date.now() < deadline) {
        const view = await clients().compute.virtualMachines.instanceView(plan.resourceGroup, plan.vmName);
        if (view.vmAgent?.statuses?.some((s) => s.displayStatus === 'Ready')) return true;
        Context.current().heartbeat();
        await new Promise((r) => setTimeout(r, 2000));
      }
      throw new RestoreError(
        FailureType.AzureTransient,
        `the Azure VM agent on '${plan.vmName}' did not report Ready within 2 minutes`,
        false,
      );
    },
  };
}
