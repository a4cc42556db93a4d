import { readFileSync } from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { labDir, type LabState } from './lab';
import { pickPort, pidAlive, reuseOrStop, waitFor } from './net';

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
  /** Where the simulator lays out running VMs' disks as devices: `<deviceRoot>/<vmName>/scsi1/lun<N>`. */
  deviceRoot?: string;
  /** The lab's app registration: the worker signs in with it through the simulator's identity endpoint. */
  tenantId: string;
  clientId: string;
  clientSecretFile: string;
  /** The simulator's admin token (`X-Admin-Token` on `/_admin/...`, from loopback only). */
  adminTokenFile: string;
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
  tenantId: '00000000-0000-4000-8000-0000000a1a00',
  clientId: '00000000-0000-4000-8000-0000000c1e00',
};

/** The lab's service principal: a random secret kept under .lab/secrets, and the simulator's principals file. */
function labPrincipal(): { clientSecretFile: string; principalsFile: string } {
  const secrets = path.join(labDir(), 'secrets');
  mkdirSync(secrets, { recursive: true, mode: 0o700 });
  const clientSecretFile = path.join(secrets, 'azure-client-secret');
  if (!existsSync(clientSecretFile)) writeFileSync(clientSecretFile, randomBytes(24).toString('base64url'), { mode: 0o600 });
  const principalsFile = path.join(secrets, 'armsim-principals.json');
  const principals = [
    { tenantId: LAB_AZURE.tenantId, clientId: LAB_AZURE.clientId, clientSecret: readFileSync(clientSecretFile, 'utf8').trim() },
  ];
  writeFileSync(principalsFile, JSON.stringify(principals), { mode: 0o600 });
  return { clientSecretFile, principalsFile };
}

function adminOk(endpoint: string, caCertPath?: string, adminTokenFile?: string): Promise<boolean> {
  return new Promise((resolve) => {
    const url = `${endpoint}/_admin/health`;
    const mod = url.startsWith('https:') ? https : http;
    const ca = caCertPath ? readFileSync(caCertPath) : undefined;
    let token: string;
    try {
      token = adminTokenFile ? readFileSync(adminTokenFile, 'utf8').trim() : '';
    } catch {
      return resolve(false);
    }
    const req = mod.get(url, { timeout: 2000, ca, headers: { 'x-admin-token': token } }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
  });
}

/** Where the lab's simulated VMs show their disks as devices (one folder per VM). */
export function labDeviceRoot(): string {
  return path.join(labDir(), 'devices');
}

/** The ARM simulator joins the lab as a child process, pointed at the lab's Azurite. */
export async function startArmSim(state: LabState, log: (s: string) => void, taken: Set<number>): Promise<LabState> {
  const prev = state.azure as LabAzure | undefined;
  if (prev && (await reuseOrStop('ARM simulator', prev.pid, () => adminOk(prev.armEndpoint, prev.caCertPath, prev.adminTokenFile), log))) {
    if (prev.clientId && prev.adminTokenFile && prev.deviceRoot) {
      log(`armsim: reusing pid ${prev.pid} at ${prev.armEndpoint}`);
      return state;
    }
    // Started before the lab had an app registration, an admin token or disk devices: restart it.
    process.kill(prev.pid, 'SIGTERM');
    await waitFor('ARM simulator to stop', async () => !pidAlive(prev.pid), { timeoutMs: 10_000 });
  }
  const principal = labPrincipal();
  const blob = state.blob;
  if (!blob) throw new Error('the ARM simulator needs the lab blob service (Azurite)');
  const preferred = Number(process.env.VMRESTORE_LAB_ARM_PORT ?? 8443);
  const port = await pickPort(preferred, taken);
  const stateDir = path.join(labDir(), 'armsim');
  mkdirSync(stateDir, { recursive: true });
  const deviceRoot = labDeviceRoot();
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
      '--principals',
      `@${principal.principalsFile}`,
      '--only-issued-tokens',
      '--device-root',
      deviceRoot,
    ],
    { detached: true, stdio: ['ignore', fd, errFd], cwd: path.join(__dirname, '..', '..') },
  );
  child.unref();
  const pid = child.pid!;
  let ready: { endpoint: string; caCertPath: string | null; adminTokenFile: string | null } | undefined;
  await waitFor(
    'ARM simulator',
    async () => {
      const text = readFileSync(readyFile, 'utf8').trim();
      if (!text) return false;
      ready = JSON.parse(text.split('\n')[0]);
      return adminOk(ready!.endpoint, ready!.caCertPath ?? undefined, ready!.adminTokenFile ?? undefined);
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
    tenantId: L.tenantId,
    clientId: L.clientId,
    clientSecretFile: principal.clientSecretFile,
    adminTokenFile: ready!.adminTokenFile ?? path.join(stateDir, 'admin-token'),
    deviceRoot,
  };
  log(`armsim: started pid ${pid} at ${azure.armEndpoint}`);
  return { ...state, azure };
}
