import { directTransport } from './direct';

/** Direct NAS access: the proxy mounts the datastore's NFS export and writes the flat extent. */
export const directNas = directTransport({
  mode: 'direct-nas',
  needs: 'an NFS mount of the datastore on the proxy (nasMounts), and thick disks',
  mounts: (proxy) => proxy.nasMounts,
  noAccess: (proxy, datastore) => `proxy '${proxy.name}' has no NFS mount of datastore '${datastore}'`,
});
