import { FailureType, RestoreError } from '../../domain/errors';
import type { CreatedVm, VSpherePlan } from '../../domain/vsphere';
import { RESTORE_ID_KEY, type VSphereContext } from './context';

/** The restored VM: created (or found again) and registered, powered on, or destroyed as compensation. */
export function createVmActivities(ctx: VSphereContext) {
  const { sessions } = ctx;
  return {
    /**
     * Creates and registers the VM from the backed-up config; a retry finds the VM it made before. Only a
     * VM with both the plan's name and this restore's id is adopted: one with the name but another id (or
     * none) is someone else's, and one with our id but another name is not what the plan describes.
     */
    async createVm(plan: VSpherePlan): Promise<CreatedVm> {
      const client = await sessions.get(plan.profile);
      const dc = await client.datacenter(plan.datacenter);
      const found = await client.findVmsByExtraConfig(dc, RESTORE_ID_KEY, plan.restoreId);
      const renamed = found.filter((vm) => vm.name !== plan.vmName);
      if (renamed.length > 0) {
        throw new RestoreError(
          FailureType.AlreadyExists,
          `VM '${renamed[0].name}' carries this restore's id (${plan.restoreId}) but not the planned name '${plan.vmName}'; not adopting it`,
        );
      }
      if (found.length > 0) {
        const cfg = await found[0].config();
        return { vmRef: found[0].ref, vmName: cfg.name, diskFiles: cfg.disks.map((d) => d.fileName), created: false };
      }
      const sameName = await client.findVmByName(dc, plan.vmName);
      if (sameName) {
        const owner = (await sameName.config()).extraConfig[RESTORE_ID_KEY];
        throw new RestoreError(
          FailureType.AlreadyExists,
          `a VM named '${plan.vmName}' already exists in datacenter '${dc.name}' (${owner ? `restore ${owner}` : 'not made by a restore'}); choose another --vm-name`,
        );
      }
      const vm = await client.createVm(dc, {
        name: plan.vmName,
        folder: await client.folder(dc, plan.folder),
        pool: await client.resourcePool(dc, plan.resourcePool),
        datastore: await client.datastore(dc, plan.datastore),
        guestId: plan.vm.guestOs === 'windows' ? 'windows2019srv_64Guest' : 'otherLinux64Guest',
        cpus: plan.vm.cpus,
        memoryMiB: plan.vm.memoryMiB,
        firmware: plan.vm.firmware,
        extraConfig: { [RESTORE_ID_KEY]: plan.restoreId, 'vmrestore.restorePointId': plan.restorePointId },
        nics: plan.networks.map((network) => ({ network })),
        disks: plan.disks.map((d) => ({ capacityBytes: d.capacityBytes, thinProvisioned: d.thin, eagerlyScrub: d.eagerlyScrub })),
      });
      const cfg = await vm.config();
      return { vmRef: vm.ref, vmName: cfg.name, diskFiles: cfg.disks.map((d) => d.fileName), created: true };
    },

    /** The ESXi host the restored VM is registered on: what a per-host limit counts against. */
    async vmHostName(args: { plan: VSpherePlan; vmRef: string }): Promise<string> {
      const client = await sessions.get(args.plan.profile);
      return client.vm(args.vmRef).hostName();
    },

    async powerOnVm(args: { plan: VSpherePlan; vmRef: string }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      await client.vm(args.vmRef).powerOn();
    },

    /**
     * Compensation: removes the half-restored VM (found by restore id and the planned name, as createVm
     * adopts it) and unmaps its disks from the proxy. A VM of that name without our id is never touched.
     */
    async destroyRestoredVm(args: { plan: VSpherePlan }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      const dc = await client.datacenter(args.plan.datacenter);
      const vms = (await client.findVmsByExtraConfig(dc, RESTORE_ID_KEY, args.plan.restoreId)).filter((vm) => vm.name === args.plan.vmName);
      const proxy = args.plan.proxyVmName ? await client.findVmByName(dc, args.plan.proxyVmName) : null;
      for (const vm of vms) {
        const cfg = await vm.config();
        if (proxy) for (const d of cfg.disks) await proxy.detachDisk(d.fileName);
        await vm.destroy();
      }
    },
  };
}
