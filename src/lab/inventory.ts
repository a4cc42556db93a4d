import type { LabState } from './lab';
import { VSphereClient } from '../vsphere';

/** A small VM in vcsim that stands for a backup proxy, so HotAdd has a real VM to attach disks to. */
export async function createProxyVm(client: VSphereClient, datacenter: string, name: string, datastore: string): Promise<void> {
  const dc = await client.datacenter(datacenter);
  await client.createVm(dc, {
    name,
    folder: await client.folder(dc),
    pool: await client.resourcePool(dc),
    datastore: await client.datastore(dc, datastore),
    guestId: 'otherLinux64Guest',
    cpus: 2,
    memoryMiB: 4096,
    firmware: 'bios',
    extraConfig: { 'vmrestore.role': 'proxy' },
    nics: [{ network: 'VM Network' }],
    disks: [{ capacityBytes: 16 * 1024 * 1024, thinProvisioned: true, eagerlyScrub: false }],
  });
}

/** The lab's backup proxy is a VM in vcsim, so HotAdd has a real VM to attach disks to. */
export async function ensureProxyVm(state: LabState, log: (s: string) => void): Promise<LabState> {
  const v = state.vsphere;
  if (!v) return state;
  const client = await VSphereClient.connect({ url: v.url, username: v.username, password: v.password, thumbprint: v.thumbprint });
  try {
    const dc = await client.datacenter(v.datacenter);
    if (!(await client.findVmByName(dc, v.proxyVmName))) {
      await createProxyVm(client, v.datacenter, v.proxyVmName, v.datastore);
      const proxy = await client.findVmByName(dc, v.proxyVmName);
      await proxy?.powerOn();
      log(`vcsim: created backup proxy VM '${v.proxyVmName}'`);
    }
  } finally {
    await client.logout().catch(() => {});
  }
  return state;
}
