import path from 'node:path';
import { applyEnvOverrides, configFilePath, loadConfigFile, type AppConfig, type AzureConfig } from './index';
import type { LabAzure } from '../lab/azure';
import { labAgentInstaller } from '../lab/agent-installer';
import { FailureType, RestoreError } from '../domain/errors';
import { labDir, readLabState, type LabState } from '../lab/lab';

/** The lab's endpoints as a config: what `npm start` and the tests run against. */
export function labConfig(lab: LabState): AppConfig {
  if (!lab.temporal || !lab.vsphere) {
    throw new RestoreError(
      FailureType.Configuration,
      'no vmrestore.config.json (or VMRESTORE_CONFIG) and the local lab is not running: run `vmrestore lab up`, or write a config file (see README "Configuration")',
    );
  }
  const v = lab.vsphere;
  return {
    temporal: { address: lab.temporal.address, namespace: lab.temporal.namespace, taskQueue: 'vmrestore', uiUrl: lab.temporal.ui },
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
    proxies: [
      {
        name: 'lab-proxy',
        vmName: v.proxyVmName,
        transports: ['direct-san', 'direct-nas', 'hotadd', 'nbd'],
        // In the lab every path to a datastore ends in vcsim's folder for it.
        nasMounts: v.datastorePaths,
        sanMounts: v.datastorePaths,
        hotaddDevices: v.datastorePaths,
        profile: 'lab',
      },
    ],
    restore: { diskConcurrency: 2, readConcurrency: 4, checkpointBytes: 16 * 1024 * 1024 },
    azure: lab.azure && lab.blob ? labAzureConfig(lab.azure as LabAzure, lab.blob.connectionString) : undefined,
    // The lab worker boots restored disks itself, unless a separate `vmrestore worker --verifier` does.
    verifier: { embeddedWorker: process.env.VMRESTORE_LAB_VERIFIER_WORKER !== 'separate' },
    fromLab: true,
    source: path.join(labDir(), 'lab.json'),
  };
}

function labAzureConfig(a: LabAzure, blobConnectionString: string): AzureConfig {
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
    blobConnectionString,
    leaseHolderCheckSeconds: Number(process.env.VMRESTORE_AZURE_LEASE_CHECK_SECONDS ?? 30),
    // A small, clearly marked stand-in the simulator recognises once staged: the lab restores Windows with the agent.
    windowsAgentInstaller: { path: labAgentInstaller() },
    allowTestSwitches: true,
    proxies: [
      {
        name: 'lab-azure-proxy',
        resourceGroup: a.resourceGroup,
        vmName: a.proxyVmName,
        idleTimeoutSeconds: Number(process.env.VMRESTORE_AZURE_PROXY_IDLE_SECONDS ?? 20),
      },
    ],
    helpers: {
      [a.location]: {
        resourceGroup: a.resourceGroup,
        vmName: a.helperVmName,
        idleTimeoutSeconds: Number(process.env.VMRESTORE_AZURE_HELPER_IDLE_SECONDS ?? 5),
        // The lab's helper appliance is a simulated VM, so the lab worker serves its queue too, unless told
        // that a separate `vmrestore worker --helper <location>` does (as inside a real appliance).
        embeddedWorker: process.env.VMRESTORE_LAB_HELPER_WORKER !== 'separate',
        // The simulator shows the helper's attached disks there, as /dev/disk/azure inside a real appliance.
        deviceRoot: path.join(a.deviceRoot ?? path.join(labDir(), 'devices'), a.helperVmName),
      },
    },
  };
}

/** Config file (plus env overrides) when present, else the running lab. */
export function loadAppConfig(env: NodeJS.ProcessEnv = process.env): AppConfig {
  const file = configFilePath(env);
  if (file) return applyEnvOverrides(loadConfigFile(file), env);
  return applyEnvOverrides(labConfig(readLabState()), env);
}
