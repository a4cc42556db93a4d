import type { Client } from '@temporalio/client';
import type { AppConfig, ProxyConfig } from '../../config';
import { FailureType, RestoreError } from '../../domain/errors';
import type { VSpherePlan } from '../../domain/vsphere';
import { openRepository, type RestorePoint } from '../../repository';
import type { Vm, VSphereClient } from '../../vsphere';
import { KeyedLock } from '../keyed-lock';
import type { VSphereSessions } from './sessions';

/** extraConfig key that ties a VM to the restore that created it, so retries find it again. */
export const RESTORE_ID_KEY = 'vmrestore.restoreId';

export interface VSphereDeps {
  config: AppConfig;
  sessions: VSphereSessions;
  /** On a proxy worker: asks the server whether a disk write is still current (writer-fence.ts). */
  client?: Client;
}

/** What the vSphere activities of one worker share: its config, sessions, restore points and proxy locks. */
export interface VSphereContext extends VSphereDeps {
  /** Reconfigurations of one proxy VM are serialized: parallel disks would race for a SCSI unit. */
  proxyLocks: KeyedLock;
  loadRestorePoint(id: string): Promise<RestorePoint>;
  proxyByName(name: string): ProxyConfig;
  /** The plan's proxy VM; its absence makes HotAdd unavailable. */
  proxyVm(client: VSphereClient, plan: VSpherePlan): Promise<Vm>;
}

export function invalid(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, message);
}

export function createVSphereContext(deps: VSphereDeps): VSphereContext {
  const { config } = deps;
  const restorePoints = new Map<string, Promise<RestorePoint>>();
  const loadRestorePoint = (id: string) => {
    let rp = restorePoints.get(id);
    if (!rp) {
      rp = openRepository(config.repository).getRestorePoint(id);
      restorePoints.set(id, rp);
      rp.catch(() => restorePoints.delete(id));
    }
    return rp;
  };
  const proxyByName = (name: string): ProxyConfig => {
    const p = config.proxies.find((x) => x.name === name);
    if (!p) invalid(`proxy '${name}' is not configured (known: ${config.proxies.map((x) => x.name).join(', ') || 'none'})`);
    return p;
  };
  const proxyVm = async (client: VSphereClient, plan: VSpherePlan) => {
    const dc = await client.datacenter(plan.datacenter);
    const vm = plan.proxyVmName ? await client.findVmByName(dc, plan.proxyVmName) : null;
    if (!vm) {
      throw new RestoreError(FailureType.TransportUnavailable, `hotadd: proxy VM '${plan.proxyVmName}' not found in '${plan.datacenter}'`);
    }
    return vm;
  };
  return { ...deps, proxyLocks: new KeyedLock(), loadRestorePoint, proxyByName, proxyVm };
}
