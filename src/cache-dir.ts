import os from 'node:os';
import path from 'node:path';

/**
 * Where vmrestore keeps what it builds once and reuses (Go-built tools, guest images, workflow bundles):
 * `VMRESTORE_CACHE_DIR`, else `$XDG_CACHE_HOME/vmrestore`, else `~/.cache/vmrestore`; `sub` names a part.
 */
export function cacheDir(...sub: string[]): string {
  const base = process.env.VMRESTORE_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'vmrestore');
  return path.join(base, ...sub);
}
