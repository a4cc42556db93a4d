import { localTargetPath, writeToLocalTarget } from './proxy-file';
import type { DiskTransport } from './transport';
import { notConfigured, thinBlocksDirect } from './transport';

/**
 * Direct NAS access: the proxy mounts the datastore's NFS export and writes the flat extent through that
 * mount, and through nothing else: where the mount is gone (an empty mount point), the write fails.
 */
export const directNas: DiskTransport = {
  mode: 'direct-nas',
  needs: 'an NFS mount of the datastore on the proxy (nasMounts), and thick disks',
  cannot: (proxy, datastore, anyThin) =>
    notConfigured(proxy, 'direct-nas') ??
    thinBlocksDirect('direct-nas', anyThin) ??
    (proxy.nasMounts?.[datastore] ? undefined : `proxy '${proxy.name}' has no NFS mount of datastore '${datastore}'`),
  write: async (job) => writeToLocalTarget(job, 'direct-nas', localTargetPath(job, 'direct-nas', job.proxy.nasMounts)),
};
