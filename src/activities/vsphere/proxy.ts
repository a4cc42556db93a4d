import type { VSpherePlan } from '../../domain/vsphere';
import type { VSphereContext } from './context';

/** HotAdd: the restored disks attached to the proxy VM, and detached again (also on failure). */
export function createProxyActivities(ctx: VSphereContext) {
  const { sessions, proxyLocks, proxyVm } = ctx;
  return {
    async attachToProxy(args: { plan: VSpherePlan; diskFile: string; diskIndex?: number }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      const proxy = await proxyVm(client, args.plan);
      // Reconfigurations of one proxy VM are serialized: parallel disks would race for a SCSI unit.
      await proxyLocks.run(args.plan.proxyVmName ?? '', async () => {
        const attached = await proxy.attachedDiskFiles();
        if (attached.includes(args.diskFile)) return;
        const disk = args.plan.disks.find((d) => d.diskIndex === args.diskIndex) ?? args.plan.disks[0];
        await proxy.attachDisk(args.diskFile, { capacityBytes: disk?.capacityBytes ?? 0 });
      });
    },

    async detachFromProxy(args: { plan: VSpherePlan; diskFiles: string[] }): Promise<void> {
      if (!args.plan.proxyVmName) return;
      const client = await sessions.get(args.plan.profile);
      const dc = await client.datacenter(args.plan.datacenter);
      const proxy = await client.findVmByName(dc, args.plan.proxyVmName);
      if (!proxy) return;
      await proxyLocks.run(args.plan.proxyVmName, async () => {
        for (const f of args.diskFiles) await proxy.detachDisk(f);
      });
    },
  };
}
