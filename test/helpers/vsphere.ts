import path from 'node:path';
import type { AppConfig } from '../../src/config';
import { resolvePassword } from '../../src/config';
import { readLabState } from '../../src/lab';
import { VSphereClient, flatFileName, parseDatastorePath } from '../../src/vsphere';
import { openTestEnv, startWorkerProcess, type TestEnv, type WorkerProcess } from './env';

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

export interface VSphereLab {
  env: TestEnv;
  worker: WorkerProcess;
  vs: VSphereClient;
}

/** The lab, a worker process on a test-only task queue, and a vCenter session for checking results. */
export async function openVSphereLab(name: string): Promise<VSphereLab> {
  const env = await openTestEnv(name);
  const worker = await startWorkerProcess(env.taskQueue);
  const vs = await labVSphere(env.config);
  return { env, worker, vs };
}

/** Undoes openVSphereLab; tolerates a partly opened lab (a failed before hook). */
export async function closeVSphereLab(lab: Partial<VSphereLab>): Promise<void> {
  await lab.worker?.stop();
  await lab.vs?.logout().catch(() => {});
  await lab.env?.close();
}
