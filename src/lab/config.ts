import { chmodSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { applyLabEnvOverrides, labConfigPath, parseConfig, type AppConfig } from '../config';
import { TASK_QUEUE } from '../domain/task-queues';
import { FailureType, RestoreError } from '../domain/errors';
import type { LabAzure } from './azure';
import { labAgentInstaller } from './agent-installer';
import { labDir, type LabState, type LabVSphere } from './lab';

function writePrivate(file: string, content: string): void {
  mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, file);
}

/**
 * The lab's endpoints as a config file's content: what `npm start` and the tests run against. Secrets stay
 * in files beside it (the vcsim password, the lab app's client secret, the Blob connection string).
 */
export function labConfigFile(lab: LabState): Record<string, unknown> {
  if (!lab.temporal || !lab.vsphere) {
    throw new RestoreError(
      FailureType.Configuration,
      'no vmrestore.config.json (or VMRESTORE_CONFIG) and the local lab is not running: run `vmrestore lab up`, or write a config file (see README "Configuration")',
    );
  }
  const v = lab.vsphere;
  return {
    temporal: { address: lab.temporal.address, namespace: lab.temporal.namespace, taskQueue: TASK_QUEUE, uiUrl: lab.temporal.ui },
    repository: { path: path.join(labDir(), 'repository') },
    vsphere: {
      defaultProfile: 'lab',
      profiles: {
        lab: {
          url: v.url,
          username: v.username,
          passwordFile: v.passwordFile,
          thumbprint: v.thumbprint,
          datacenter: v.datacenter,
          datastore: v.datastore,
        },
      },
    },
    proxies: [labProxy(v)],
    restore: { diskConcurrency: 2, readConcurrency: 4, checkpointBytes: 16 * 1024 * 1024 },
    azure: lab.azure && lab.blob ? labAzureConfig(lab.azure as LabAzure, lab.blob.connectionString) : undefined,
    // The lab worker boots restored disks itself, unless a separate `vmrestore worker --verifier` does.
    verifier: { embeddedWorker: true },
  };
}

/**
 * The lab's vSphere proxy: each transport through its own path (storage.ts): the LUN's loop device for
 * SAN, the bind mount standing in for the NFS mount for NAS, the proxy VM's device folder for HotAdd.
 */
/**
 * A proxy on this machine as the lab offers it: each transport through its own path (the LUN, the NAS
 * mount, the folder where disks hot-added to proxy VM `vmName` appear by UUID).
 */
export function labProxy(v: LabVSphere, name = 'lab-proxy', vmName = v.proxyVmName): Record<string, unknown> {
  const st = v.storage;
  const byId = path.join(st?.proxyDevices ?? path.join(labDir(), 'vsphere-devices'), vmName, 'by-id');
  const nasMounts = st?.nasMounts ?? {};
  const sanLuns = st?.san ? { [st.san.datastore]: st.san.device } : {};
  const transports = [
    ...(Object.keys(sanLuns).length ? ['direct-san'] : []),
    ...(Object.keys(nasMounts).length ? ['direct-nas'] : []),
    'hotadd',
    'nbd',
  ];
  return {
    name,
    vmName,
    transports,
    nasMounts,
    sanLuns,
    hotaddDevices: Object.fromEntries(Object.keys(v.datastorePaths).map((ds) => [ds, byId])),
    profile: 'lab',
    maxTasks: 4,
    // The lab's proxy is this machine, so the lab worker writes its disks (on the proxy's own queue).
    embeddedWorker: true,
  };
}

function labAzureConfig(a: LabAzure, blobConnectionString: string): Record<string, unknown> {
  const blobConnectionStringFile = path.join(labDir(), 'secrets', 'blob-connection-string');
  writePrivate(blobConnectionStringFile, blobConnectionString);
  return {
    subscriptionId: a.subscriptionId,
    resourceGroup: a.resourceGroup,
    location: a.location,
    locations: [a.location],
    subnetId: a.subnetId,
    storageAccountId: a.storageAccountId,
    container: a.container,
    defaultVmSize: 'Standard_D2s_v3',
    // Signs in as the lab's app registration through the simulator's identity endpoint, as against Entra ID.
    credential: {
      type: 'clientSecret',
      tenantId: a.tenantId,
      clientId: a.clientId,
      clientSecretFile: a.clientSecretFile,
      authorityHost: a.armEndpoint,
    },
    armEndpoint: a.armEndpoint,
    caCertPath: a.caCertPath || undefined,
    blobConnectionStringFile,
    leaseHolderCheckSeconds: 30,
    // A small, clearly marked stand-in the simulator recognises once staged: the lab restores Windows with the agent.
    windowsAgentInstaller: { path: labAgentInstaller() },
    proxies: [{ name: 'lab-azure-proxy', resourceGroup: a.resourceGroup, vmName: a.proxyVmName, idleTimeoutSeconds: 20 }],
    helpers: {
      [a.location]: {
        resourceGroup: a.resourceGroup,
        vmName: a.helperVmName,
        idleTimeoutSeconds: 5,
        // The lab's helper appliance is a simulated VM, so the lab worker serves its queue too, unless told
        // that a separate `vmrestore worker --helper <location>` does (as inside a real appliance).
        embeddedWorker: true,
        // The simulator shows the helper's attached disks there, as /dev/disk/azure inside a real appliance.
        deviceRoot: path.join(a.deviceRoot ?? path.join(labDir(), 'devices'), a.helperVmName),
      },
    },
  };
}

/** The lab's configuration as the loader reads it from the file `lab up` writes (with the lab's env knobs). */
export function labConfig(lab: LabState, env: NodeJS.ProcessEnv = process.env): AppConfig {
  const file = labConfigPath(env);
  return applyLabEnvOverrides(parseConfig(labConfigFile(lab), file, path.dirname(file), { fromLab: true }), env);
}

/** Writes the configuration of the running lab where `loadAppConfig` finds it when no config file is given. */
export function writeLabConfig(lab: LabState): string {
  const file = labConfigPath();
  writePrivate(file, JSON.stringify(labConfigFile(lab), null, 2) + '\n');
  return file;
}
