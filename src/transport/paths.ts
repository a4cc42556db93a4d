import path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';

/**
 * `root` joined with the datastore-relative `rel`, refused unless the result stays inside `root`: a VM
 * or disk name holding '..' (from a hostile restore point, or a datastore path vSphere hands back)
 * must never point a write at a file outside the proxy's mount or device directory.
 */
export function pathInside(root: string, rel: string, what: string): string {
  // eslint-disable-next-line no-control-regex
  if (rel.length === 0 || /\x00/.test(rel) || path.isAbsolute(rel)) {
    throw new RestoreError(FailureType.InvalidRequest, `${what}: path ${JSON.stringify(rel)} is not a relative path on the datastore`);
  }
  const base = path.resolve(root);
  const target = path.resolve(base, rel);
  if (target === base || !target.startsWith(base + path.sep)) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `${what}: path ${JSON.stringify(rel)} leaves ${base} (resolves to ${target}); refusing to write there`,
    );
  }
  return target;
}
