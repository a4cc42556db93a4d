import { FailureType, RestoreError } from '../domain/errors';

/** A file on a datastore, as vSphere writes it: `[LocalDS_0] web01/web01.vmdk`. */
export interface DatastorePath {
  datastore: string;
  /** Path inside the datastore, without a leading slash; '' for the datastore root. */
  path: string;
}

export function parseDatastorePath(value: string): DatastorePath {
  const m = /^\s*\[([^\]]+)\]\s*(.*)$/.exec(value);
  if (!m) {
    throw new RestoreError(FailureType.InvalidRequest, `'${value}' is not a datastore path; expected '[datastore] folder/file'`);
  }
  return { datastore: m[1], path: m[2].replace(/^\/+/, '') };
}

export function formatDatastorePath(datastore: string, path: string): string {
  const p = path.replace(/^\/+/, '');
  return p ? `[${datastore}] ${p}` : `[${datastore}]`;
}

/**
 * The extent that holds a flat disk's bytes: `vm/vm.vmdk` → `vm/vm-flat.vmdk`. Accepts a plain
 * path or a datastore path and answers in the same form.
 */
export function flatFileName(descriptor: string): string {
  if (/^\s*\[/.test(descriptor)) {
    const p = parseDatastorePath(descriptor);
    return formatDatastorePath(p.datastore, flatFileName(p.path));
  }
  if (!/\.vmdk$/i.test(descriptor)) {
    throw new RestoreError(FailureType.InvalidRequest, `'${descriptor}' is not a .vmdk descriptor path`);
  }
  if (/-flat\.vmdk$/i.test(descriptor)) return descriptor;
  return descriptor.replace(/\.vmdk$/i, '-flat.vmdk');
}

/** A server URL, or anything that has one (a VSphereClient). */
export type UrlBase = string | URL | { url: URL };

/**
 * URL of a datastore file in the HTTP file service:
 * `https://host/folder/<path>?dcPath=<datacenter>&dsName=<datastore>`.
 * `base` is the vCenter/ESXi URL or a client (any path on it is ignored); `datacenterPath` is the datacenter's
 * inventory path ('DC0', or 'Folder/DC0' for a nested one).
 */
export function datastoreFileUrl(base: UrlBase, datacenterPath: string, datastore: string, path: string): URL {
  const b = new URL(typeof base === 'object' && 'url' in base ? base.url : base);
  const encoded = path
    .replace(/^\/+/, '')
    .split('/')
    .map((seg) => encodeURIComponent(seg))
    .join('/');
  const url = new URL(`${b.protocol}//${b.host}/folder/${encoded}`);
  url.searchParams.set('dcPath', datacenterPath.replace(/^\/+/, ''));
  url.searchParams.set('dsName', datastore);
  return url;
}

/** {@link datastoreFileUrl} for a `[datastore] path` string. */
export function datastorePathToUrl(base: UrlBase, datacenterPath: string, datastorePath: string): URL {
  const p = parseDatastorePath(datastorePath);
  return datastoreFileUrl(base, datacenterPath, p.datastore, p.path);
}
