import type { VSpherePlan } from '../../domain/vsphere';
import type { VSphereContext } from './context';

/** The restore snapshot: taken before the disks are written, committed once they are. */
export function createSnapshotActivities(ctx: VSphereContext) {
  const { sessions } = ctx;
  return {
    async createSnapshot(args: { plan: VSpherePlan; vmRef: string }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      await client.vm(args.vmRef).createSnapshot(`vmrestore-${args.plan.restoreId}`, 'restore in progress');
    },

    async commitSnapshot(args: { plan: VSpherePlan; vmRef: string }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      await client.vm(args.vmRef).removeSnapshot(`vmrestore-${args.plan.restoreId}`, { consolidate: true });
    },
  };
}
