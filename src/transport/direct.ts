import type { ProxyConfig } from '../config';
import { writeThroughProxyFile } from './proxy-file';
import type { DiskTransport } from './transport';
import { notConfigured, thinBlocksDirect } from './transport';

/** A direct storage access mode: the proxy writes the flat extent where its mount of the datastore shows it. */
export function directTransport(spec: {
  mode: 'direct-san' | 'direct-nas';
  needs: string;
  mounts: (proxy: ProxyConfig) => Record<string, string> | undefined;
  noAccess: (proxy: ProxyConfig, datastore: string) => string;
}): DiskTransport {
  return {
    mode: spec.mode,
    needs: spec.needs,
    cannot: (proxy, datastore, anyThin) =>
      notConfigured(proxy, spec.mode) ??
      thinBlocksDirect(spec.mode, anyThin) ??
      (spec.mounts(proxy)?.[datastore] ? undefined : spec.noAccess(proxy, datastore)),
    write: (job) => writeThroughProxyFile(job, spec.mode, spec.mounts(job.proxy)),
  };
}
