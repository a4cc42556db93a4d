import { readFileSync } from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { mkdirSync, openSync } from 'node:fs';
import { labDir, registerLabComponent, type LabState } from './lab';
import { pickPort, pidAlive, waitFor } from './net';

export interface LabAzure {
  pid: number;
  port: number;
  armEndpoint: string;
  caCertPath: string;
  subscriptionId: string;
  resourceGroup: string;
  location: string;
  vnet: string;
  subnetId: string;
  storageAccount: string;
  storageAccountId: string;
  container: string;
  proxyVmName: string;
  helperVmName: string;
  [key: string]: unknown;
}

export const LAB_AZURE = {
  subscriptionId: '00000000-0000-4000-8000-00000000ab01',
  resourceGroup: 'vmrestore-lab',
  location: 'westeurope',
  vnet: 'lab-vnet',
  subnet: 'default',
  storageAccount: 'vmrestorelab',
  container: 'vhds',
};

function adminOk(endpoint: string, caCertPath?: string): Promise<boolean> {
  return new Promise((resolve) => {
    const url = `${endpoint}/_admin/state`;
    const mod = url.startsWith('https:') ? https : http;
    const ca = caCertPath ? readFileSync(caCertPath) : undefined;
    const req = mod.get(url, { timeout: 2000, ca }, (res) => {
      res.resume();
      resolve((res.statusCode ?? 500) < 500);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
  });
}

/** The ARM simulator joins the lab as a child process, pointed at the lab's Azurite. */
async function startArmSim(state: LabState, log: (s: string) => void, taken: Set<number>): Promise<LabState> {
  const prev = state.azure as LabAzure | undefined;
  if (prev && pidAlive(prev.pid) && (await adminOk(prev.armEndpoint, prev.caCertPath))) {
    log(`armsim: reusing pid ${prev.pid} at ${prev.armEndpoint}`);
    return state;
  }
  const blob = state.blob;
  if (!blob) throw new Error('the ARM simulator needs the lab blob service (Azurite)');
  const preferred = Number(process.env.VMRESTORE_LAB_ARM_PORT ?? 8443);
  const port = await pickPort(preferred, taken);
  const stateDir = path.join(labDir(), 'armsim');
  mkdirSync(stateDir, { recursive: true });
  const logs = path.join(labDir(), 'logs');
  mkdirSync(logs, { recursive: true });
  const logFile = path.join(logs, 'armsim.log');
  const readyFile = path.join(stateDir, 'ready.json');
  const fd = openSync(readyFile, 'w');
  const errFd = openSync(logFile, 'a');
  const L = LAB_AZURE;
  const seed = { resourceGroup: L.resourceGroup, location: L.location, vnet: L.vnet, subnet: L.subnet, storageAccount: L.storageAccount };
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      path.join(__dirname, 'armsim', 'main.ts'),
      '--state-dir',
      stateDir,
      '--port',
      String(port),
      '--subscription-id',
      L.subscriptionId,
      '--blob-endpoint',
      blob.endpoint,
      '--blob-account',
      blob.accountName,
      '--blob-key',
      blob.accountKey,
      '--seed',
      JSON.stringify(seed),
    ],
    { detached: true, stdio: ['ignore', fd, errFd], cwd: path.join(__dirname, '..', '..') },
  );
  child.unref();
  const pid = child.pid!;
  let ready: { endpoint: string; caCertPath: string | null } | undefined;
  await waitFor(
    'ARM simulator',
    async () => {
      const text = readFileSync(readyFile, 'utf8').trim();
      if (!text) return false;
      ready = JSON.parse(text.split('\n')[0]);
      return adminOk(ready!.endpoint, ready!.caCertPath ?? undefined);
    },
    { timeoutMs: 30_000, logFile, isAlive: () => pidAlive(pid) },
  );
  const sub = `/subscriptions/${L.subscriptionId}/resourceGroups/${L.resourceGroup}`;
  const azure: LabAzure = {
    pid,
    port,
    armEndpoint: ready!.endpoint,
    caCertPath: ready!.caCertPath ?? '',
    subscriptionId: L.subscriptionId,
    resourceGroup: L.resourceGroup,
    location: L.location,
    vnet: L.vnet,
    subnetId: `${sub}/providers/Microsoft.Network/virtualNetworks/${L.vnet}/subnets/${L.subnet}`,
    storageAccount: L.storageAccount,
    storageAccountId: `${sub}/providers/Microsoft.Storage/storageAccounts/${L.storageAccount}`,
    container: L.container,
    proxyVmName: `vmrestore-proxy-${L.location}`,
    helperVmName: `vmrestore-helper-${L.location}`,
  };
  log(`armsim: started pid ${pid} at ${azure.armEndpoint}`);
  return { ...state, azure };
}

registerLabComponent(startArmSim);
