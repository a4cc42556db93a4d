import type { LabState } from './lab';
import { VSphereClient } from '../vsphere';

/** The lab's backup proxy is a VM in vcsim, so HotAdd has a real VM to attach disks to. */
export async function ensureProxyVm(state: LabState, log: (s: string) => void): Promise<LabState> {
  const v = state.vsphere;
  if (!v) return state;
  const client = await VSphereClient.connect({ url: v.url, username: v.username, password: v.password, thumbprint: v.thumbprint });
  try {
    const dc = await client.datacenter(v.datacenter);
    if (!(await client.findVmByName(dc, v.proxyVmName))) {
      await client.createVm(dc, {
        name: v.proxyVmName,
        folder: await client.folder(dc),
        pool: await client.resourcePool(dc),
        datastore: await client.datastore(dc, v.datastore),
        guestId: 'otherLinux64Guest',
        cpus: 2,
        memoryMiB: 4096,
        firmware: 'bios',
        extraConfig: { 'vmrestore.role': 'proxy' },
        nics: [{ network: 'VM Network' }],
        disks: [{ capacityBytes: 16 * 1024 * 1024, thinProvisioned: true, eagerlyScrub: false }],
      });
      const proxy = await client.findVmByName(dc, v.proxyVmName);
      await proxy?.powerOn();
      log(`vcsim: created backup proxy VM '${v.proxyVmName}'`);
    }
  } finally {
    await client.logout().catch(() => {});
  }
  return state;
}
