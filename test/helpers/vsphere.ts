import path from 'node:path';
import type { AppConfig } from '../../src/config';
import { resolvePassword } from '../../src/config';
import { readLabState } from '../../src/lab';
import { VSphereClient, flatFileName, parseDatastorePath } from '../../src/vsphere';

export async function labVSphere(config: AppConfig): Promise<VSphereClient> {
  const p = config.vsphere.profiles.lab;
  return VSphereClient.connect({ url: p.url, username: p.username, password: resolvePassword('lab', p), thumbprint: p.thumbprint });
}

/** Local file behind a datastore path such as '[LocalDS_0] vm/vm.vmdk' (its flat extent). */
export function localFlatFile(datastorePath: string): string {
  const { datastore, path: rel } = parseDatastorePath(flatFileName(datastorePath));
  const root = readLabState().vsphere?.datastorePaths[datastore];
  if (!root) throw new Error(`lab has no folder for datastore ${datastore}`);
  return path.join(root, rel);
}
