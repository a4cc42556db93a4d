import type { DiskPlan, VSpherePlan } from '../../src/domain/vsphere';

/** A vSphere restore plan for tests that drive activities or workflows without initialization. */
export function testVSpherePlan(
  fields: Pick<VSpherePlan, 'restoreId' | 'restorePointId' | 'vmName' | 'proxy'> & Partial<VSpherePlan>,
): VSpherePlan {
  return {
    vm: {} as VSpherePlan['vm'],
    profile: 'default',
    datacenter: 'DC0',
    datastore: 'LocalDS_0',
    folder: 'vm',
    resourcePool: 'Resources',
    networks: [],
    disks: [],
    requiredBytes: 0,
    freeBytes: 1 << 30,
    throttleMBps: 0,
    diskConcurrency: 1,
    powerOn: false,
    keepOnFailure: false,
    ...fields,
  };
}

/** One disk of a test plan: thick, all of it data. */
export const testDiskPlan = (diskIndex: number, capacityBytes: number, transports: DiskPlan['transports']): DiskPlan => ({
  diskIndex,
  label: `Hard disk ${diskIndex + 1}`,
  capacityBytes,
  nonZeroBytes: capacityBytes,
  thin: false,
  eagerlyScrub: false,
  transports,
});
