import { FailureType, RestoreError } from '../domain/errors';
import type { DiskTransport } from './transport';
import { notConfigured } from './transport';
import { writeThroughProxyFile } from './proxy-file';

/** HotAdd: the restored disk is attached to the proxy VM (activity attachToProxy) and written as its device. */
export const hotadd: DiskTransport = {
  mode: 'hotadd',
  needs: 'a proxy that is a VM (vmName) and sees the datastore (hotaddDevices)',
  cannot: (proxy, datastore) => {
    const off = notConfigured(proxy, 'hotadd');
    if (off) return off;
    if (!proxy.vmName) return `proxy '${proxy.name}' is not a VM (no vmName), so it cannot hot-add disks`;
    if (!proxy.hotaddDevices?.[datastore]) return `proxy VM '${proxy.vmName}' cannot see datastore '${datastore}'`;
    return undefined;
  },
  write: (job) =>
    writeThroughProxyFile(job, 'hotadd', job.proxy.hotaddDevices, async () => {
      const attached = await (await job.proxyVm()).attachedDiskFiles();
      if (!attached.includes(job.diskFile)) {
        throw new RestoreError(
          FailureType.TransportUnavailable,
          `hotadd: disk ${job.diskFile} is not attached to proxy VM '${job.proxyVmName}'`,
        );
      }
    }),
};
