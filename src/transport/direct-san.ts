import { directTransport } from './direct';

/** Direct SAN access: the proxy sees the datastore's LUN as a mounted volume and writes the flat extent. */
export const directSan = directTransport({
  mode: 'direct-san',
  needs: 'a SAN mount of the datastore on the proxy (sanMounts), and thick disks',
  mounts: (proxy) => proxy.sanMounts,
  noAccess: (proxy, datastore) => `proxy '${proxy.name}' has no SAN access to datastore '${datastore}'`,
});
