import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { StorageManagementClient } from '@azure/arm-storage';
import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';
import {
  createArmClients,
  startArmSimulator,
  stubCredential,
  type ArmClients,
  type ArmSimulator,
  type SeedOptions,
} from '../../src/lab/armsim';
import { createAzureCredential } from '../../src/azure/credential';

const ROOT = path.resolve(__dirname, '../..');
const SUB = '5f0c1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b';
const ACCOUNT = 'devstoreaccount1';
const KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';
const MiB = 1024 * 1024;
const RG = 'rg-restore';
const LOC = 'westeurope';
const SEED: SeedOptions = {
  resourceGroup: RG,
  location: LOC,
  vnet: 'vnet-lab',
  subnet: 'default',
  storageAccount: 'stagingsa',
  vms: [{ name: 'legacy01', osType: 'Windows', vmSize: 'Standard_DS1_v2', powerState: 'running' }],
};
const subnetId = `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.Network/virtualNetworks/vnet-lab/subnets/default`;
const storageAccountId = `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.Storage/storageAccounts/stagingsa`;
const diskId = (name: string) => `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.Compute/disks/${name}`;
const nicId = (name: string) => `/subscriptions/${SUB}/resourceGroups/${RG}/providers/Microsoft.Network/networkInterfaces/${name}`;

// ---- fixed VHD footer (big-endian fields, CHS per the VHD spec) -----------------------------------

function chs(size: number): { c: number; h: number; s: number } {
  let total = Math.min(Math.floor(size / 512), 65535 * 16 * 255);
  let s: number;
  let h: number;
  let cth: number;
  if (total >= 65535 * 16 * 63) {
    s = 255;
    h = 16;
    cth = Math.floor(total / s);
  } else {
    s = 17;
    cth = Math.floor(total / s);
    h = Math.max(4, Math.floor((cth + 1023) / 1024));
    if (cth >= h * 1024 || h > 16) {
      s = 31;
      h = 16;
      cth = Math.floor(total / s);
    }
    if (cth >= h * 1024) {
      s = 63;
      h = 16;
      cth = Math.floor(total / s);
    }
  }
  total = Math.floor(cth / h);
  return { c: total, h, s };
}

function vhdFooter(size: number, o: { cookie?: string; diskType?: number; currentSize?: number; corruptChecksum?: boolean } = {}): Buffer {
  const b = Buffer.alloc(512);
  b.write(o.cookie ?? 'conectix', 0, 'latin1');
  b.writeUInt32BE(2, 8);
  b.writeUInt32BE(0x00010000, 12);
  b.writeBigUInt64BE(0xffffffffffffffffn, 16);
  b.writeUInt32BE(Math.floor((Date.now() - Date.UTC(2000, 0, 1)) / 1000), 24);
  b.write('vmrs', 28, 'latin1');
  b.writeUInt32BE(0x00010000, 32);
  b.write('Wi2k', 36, 'latin1');
  b.writeBigUInt64BE(BigInt(size), 40);
  b.writeBigUInt64BE(BigInt(o.currentSize ?? size), 48);
  const g = chs(size);
  b.writeUInt16BE(g.c, 56);
  b.writeUInt8(g.h, 58);
  b.writeUInt8(g.s, 59);
  b.writeUInt32BE(o.diskType ?? 2, 60);
  randomBytes(16).copy(b, 68);
  let sum = 0;
  for (const x of b) sum += x;
  b.writeUInt32BE(((~sum >>> 0) ^ (o.corruptChecksum ? 1 : 0)) >>> 0, 64);
  return b;
}

// ---- processes and helpers -----------------------------------------------------------------------

async function startAzurite(dir: string): Promise<{ proc: ChildProcess; endpoint: string }> {
  const proc = spawn(
    process.execPath,
    [
      require.resolve('azurite/dist/src/blob/main.js'),
      '--blobHost',
      '127.0.0.1',
      '--blobPort',
      '0',
      '--location',
      dir,
      '--silent',
      '--loose',
      '--skipApiVersionCheck',
      '--disableTelemetry',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('azurite did not start in 30 s')), 30_000);
    readline.createInterface({ input: proc.stdout as NodeJS.ReadableStream }).on('line', (line) => {
      const m = /successfully listens on http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    proc.once('exit', (code) => reject(new Error(`azurite exited with ${String(code)}`)));
  });
  return { proc, endpoint: `http://127.0.0.1:${port}/${ACCOUNT}` };
}

function stopProcess(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    proc.once('exit', () => resolve());
    proc.kill('SIGTERM');
  });
}

/** Raw request to the simulator (admin endpoints, storage accounts), trusting the lab CA. */
function request<T = unknown>(
  sim: { endpoint: string; caCertPath?: string; adminToken?: string },
  method: string,
  p: string,
  body?: unknown,
  extraHeaders: Record<string, string> = {},
): Promise<{ status: number; body: T; headers: http.IncomingHttpHeaders }> {
  const url = new URL(p, sim.endpoint);
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      url,
      {
        method,
        ca: sim.caCertPath ? fs.readFileSync(sim.caCertPath) : undefined,
        headers: {
          authorization: 'Bearer test',
          ...(url.pathname.startsWith('/_admin') && sim.adminToken ? { 'x-admin-token': sim.adminToken } : {}),
          ...extraHeaders,
          ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, body: (text ? JSON.parse(text) : undefined) as T, headers: res.headers });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

interface LogEntry {
  seq: number;
  method: string;
  path: string;
  status: number;
  fault?: string;
}

async function logSince(sim: ArmSimulator, seq: number): Promise<LogEntry[]> {
  const r = await request<{ entries: LogEntry[] }>(sim, 'GET', `/_admin/log?since=${seq}`);
  return r.body.entries;
}

async function lastSeq(sim: ArmSimulator): Promise<number> {
  const r = await request<{ lastSeq: number }>(sim, 'GET', '/_admin/log?since=999999999');
  return r.body.lastSeq;
}

function restError(code: string, status?: number, message?: RegExp) {
  return (err: unknown): boolean => {
    const e = err as { name?: string; code?: string; statusCode?: number; message: string };
    assert.equal(e.name, 'RestError', `expected a RestError, got ${String(e.name)}: ${e.message}`);
    assert.equal(e.code, code, e.message);
    if (status !== undefined) assert.equal(e.statusCode, status);
    if (message) assert.match(e.message, message);
    return true;
  };
}

async function powerState(c: ArmClients, vm: string): Promise<string | undefined> {
  const view = await c.compute.virtualMachines.instanceView(RG, vm);
  return view.statuses?.find((s) => s.code?.startsWith('PowerState/'))?.code;
}

// ---- the suite -----------------------------------------------------------------------------------

describe('ARM simulator driven by the real Azure SDK clients', () => {
  let tmp: string;
  let azurite: { proc: ChildProcess; endpoint: string };
  let sim: ArmSimulator;
  let c: ArmClients;
  let blobs: BlobServiceClient;
  const stateDir = () => path.join(tmp, 'armsim');

  const start = async (): Promise<void> => {
    sim = await startArmSimulator({
      stateDir: stateDir(),
      subscriptionId: SUB,
      blob: { endpoint: azurite.endpoint, accountName: ACCOUNT, accountKey: KEY },
      seed: SEED,
    });
    c = createArmClients({
      endpoint: sim.endpoint,
      subscriptionId: SUB,
      caCertPath: sim.caCertPath,
      retryOptions: { retryDelayInMs: 20, maxRetryDelayInMs: 100 },
    });
  };

  async function uploadVhd(name: string, virtualSize: number, footer?: Buffer, blobSize?: number): Promise<string> {
    const blob = blobs.getContainerClient('vhds').getPageBlobClient(name);
    const size = blobSize ?? virtualSize + 512;
    await blob.create(size);
    await blob.uploadPages(footer ?? vhdFooter(virtualSize), size - 512, 512);
    return blob.url;
  }

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'armsim-test-'));
    azurite = await startAzurite(path.join(tmp, 'azurite'));
    blobs = new BlobServiceClient(azurite.endpoint, new StorageSharedKeyCredential(ACCOUNT, KEY));
    await blobs.getContainerClient('vhds').create();
    await start();
  });

  after(async () => {
    await sim?.close();
    if (azurite) await stopProcess(azurite.proc);
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('serves the seeded network, storage account, and appliance VMs', async () => {
    assert.ok(sim.endpoint.startsWith('https://127.0.0.1:'));
    const vnet = await c.network.virtualNetworks.get(RG, 'vnet-lab');
    assert.deepEqual(vnet.addressSpace?.addressPrefixes, ['10.20.0.0/16']);
    const subnet = await c.network.subnets.get(RG, 'vnet-lab', 'default');
    assert.equal(subnet.addressPrefix, '10.20.1.0/24');
    assert.equal(subnet.id, subnetId);

    const sa = await request<{ properties: { primaryEndpoints: { blob: string } } }>(
      sim,
      'GET',
      `${storageAccountId}?api-version=2024-01-01`,
    );
    assert.equal(sa.status, 200);
    assert.equal(sa.body.properties.primaryEndpoints.blob, `${azurite.endpoint}/`);

    for (const name of [`vmrestore-proxy-${LOC}`, `vmrestore-helper-${LOC}`]) {
      const vm = await c.compute.virtualMachines.get(RG, name, { expand: 'instanceView' });
      assert.equal(vm.provisioningState, 'Succeeded');
      assert.ok(vm.instanceView?.statuses?.some((s) => s.code === 'PowerState/deallocated'));
      const osDisk = await c.compute.disks.get(RG, vm.storageProfile?.osDisk?.name ?? '');
      assert.equal(osDisk.creationData?.createOption, 'Empty');
      assert.equal(osDisk.diskState, 'Reserved');
      assert.equal(osDisk.managedBy, vm.id);
    }
    assert.equal(await powerState(c, 'legacy01'), 'PowerState/running');

    const noRg = c.compute.disks.get('rg-missing', 'x');
    await assert.rejects(noRg, restError('ResourceGroupNotFound', 404));
    await assert.rejects(c.compute.disks.get(RG, 'nope'), restError('ResourceNotFound', 404, /Microsoft.Compute\/disks\/nope/));
  });

  it('imports Gen1 and Gen2 disks from fixed VHD page blobs', async () => {
    const gen1 = await uploadVhd('web01-os.vhd', 3 * MiB);
    const disk = await c.compute.disks.createOrUpdate(RG, 'web01-os', {
      location: LOC,
      sku: { name: 'StandardSSD_LRS' },
      osType: 'Linux',
      hyperVGeneration: 'V1',
      creationData: { createOption: 'Import', sourceUri: gen1, storageAccountId },
    });
    assert.equal(disk.provisioningState, 'Succeeded');
    assert.equal(disk.diskSizeGB, 1);
    assert.equal(disk.diskSizeBytes, 3 * MiB);
    assert.equal(disk.diskState, 'Unattached');
    assert.equal(disk.hyperVGeneration, 'V1');
    assert.equal(disk.creationData?.sourceUri, gen1);

    const gen2 = await uploadVhd('web01-gen2.vhd', 2 * MiB);
    const disk2 = await c.compute.disks.createOrUpdate(RG, 'web01-gen2', {
      location: LOC,
      sku: { name: 'Premium_LRS' },
      osType: 'Linux',
      hyperVGeneration: 'V2',
      creationData: { createOption: 'Import', sourceUri: gen2, storageAccountId },
    });
    assert.equal(disk2.hyperVGeneration, 'V2');

    const data = await uploadVhd('web01-data.vhd', 1 * MiB);
    const disk3 = await c.compute.disks.createOrUpdate(RG, 'web01-data', {
      location: LOC,
      sku: { name: 'Standard_LRS' },
      diskSizeGB: 4,
      creationData: { createOption: 'Import', sourceUri: data, storageAccountId },
    });
    assert.equal(disk3.osType, undefined);
    assert.equal(disk3.diskSizeGB, 4);

    const again = await c.compute.disks.createOrUpdate(RG, 'web01-gen2', {
      location: LOC,
      sku: { name: 'Premium_LRS' },
      osType: 'Linux',
      hyperVGeneration: 'V2',
      creationData: { createOption: 'Import', sourceUri: gen2, storageAccountId },
    });
    assert.equal(again.uniqueId, disk2.uniqueId, 'the same PUT again returns the same disk');
    await assert.rejects(
      c.compute.disks.createOrUpdate(RG, 'web01-gen2', {
        location: LOC,
        osType: 'Linux',
        creationData: { createOption: 'Import', sourceUri: gen1, storageAccountId },
      }),
      restError('PropertyChangeNotAllowed', 409),
    );

    const empty = await c.compute.disks.createOrUpdate(RG, 'scratch', {
      location: LOC,
      sku: { name: 'Standard_LRS' },
      diskSizeGB: 8,
      creationData: { createOption: 'Empty' },
    });
    assert.equal(empty.diskSizeBytes, 8 * 1024 ** 3);
    const grown = await c.compute.disks.update(RG, 'scratch', { diskSizeGB: 16, tags: { purpose: 'scratch' } });
    assert.equal(grown.diskSizeGB, 16);
    assert.deepEqual(grown.tags, { purpose: 'scratch' });
    await assert.rejects(c.compute.disks.update(RG, 'scratch', { diskSizeGB: 4 }), restError('BadRequest', 400, /reduction/));
    await assert.rejects(
      c.compute.disks.createOrUpdate(RG, 'scratch2', { location: LOC, creationData: { createOption: 'Empty' } }),
      restError('BadRequest', 400, /diskSizeGB/),
    );
  });

  it('rejects bad import sources with the ARM error codes Azure uses', async () => {
    const importDisk = (name: string, sourceUri: string, sa: string | null = storageAccountId) =>
      c.compute.disks.createOrUpdate(RG, name, {
        location: LOC,
        osType: 'Linux',
        creationData: { createOption: 'Import', sourceUri, storageAccountId: sa ?? undefined },
      });
    const good = `${azurite.endpoint}/vhds/web01-os.vhd`;
    await assert.rejects(importDisk('bad1', good, null), restError('BadRequest', 400, /'storageAccountId' is missing/));
    await assert.rejects(
      importDisk('bad2', good, storageAccountId.replace('stagingsa', 'othersa')),
      restError('ResourceNotFound', 404, /storageAccounts\/othersa/),
    );
    await assert.rejects(importDisk('bad3', `${azurite.endpoint}/vhds/missing.vhd`), restError('InvalidParameter', 400, /does not exist/));
    await assert.rejects(importDisk('bad4', 'https://elsewhere.blob.core.windows.net/vhds/x.vhd'), restError('InvalidParameter', 400));

    const wrongSize = await uploadVhd('wrong-size.vhd', MiB + 512, vhdFooter(MiB + 512));
    await assert.rejects(importDisk('bad5', wrongSize), restError('BadRequest', 400, /whole number \(in MBs\)/));
    const badCookie = await uploadVhd('bad-cookie.vhd', MiB, vhdFooter(MiB, { cookie: 'cxsparse' }));
    await assert.rejects(importDisk('bad6', badCookie), restError('BadRequest', 400, /cookie value 'conectix'/));
    const dynamic = await uploadVhd('dynamic.vhd', MiB, vhdFooter(MiB, { diskType: 3 }));
    await assert.rejects(importDisk('bad7', dynamic), restError('BadRequest', 400, /dynamic VHD/));
    const checksum = await uploadVhd('checksum.vhd', MiB, vhdFooter(MiB, { corruptChecksum: true }));
    await assert.rejects(importDisk('bad8', checksum), restError('BadRequest', 400, /checksum/));
    const mismatch = await uploadVhd('mismatch.vhd', MiB, vhdFooter(MiB, { currentSize: 2 * MiB }));
    await assert.rejects(importDisk('bad9', mismatch), restError('BadRequest', 400, /current size/));
    const block = blobs.getContainerClient('vhds').getBlockBlobClient('block.vhd');
    await block.upload(Buffer.concat([Buffer.alloc(MiB), vhdFooter(MiB)]), MiB + 512);
    await assert.rejects(importDisk('bad10', block.url), restError('BadRequest', 400, /page blobs/));

    const list = [];
    for await (const d of c.compute.disks.listByResourceGroup(RG)) list.push(d.name);
    assert.ok(!list.some((n) => n?.startsWith('bad')), 'failed imports must not leave disks behind');
  });

  it('creates NICs in the seeded subnet and checks the subnet reference', async () => {
    const nic = await c.network.networkInterfaces.beginCreateOrUpdateAndWait(RG, 'web01-nic', {
      location: LOC,
      ipConfigurations: [{ name: 'ipconfig1', subnet: { id: subnetId } }],
    });
    assert.equal(nic.provisioningState, 'Succeeded');
    const ip = nic.ipConfigurations?.[0].privateIPAddress ?? '';
    assert.match(ip, /^10\.20\.1\.\d+$/);
    const seeded = await c.network.networkInterfaces.get(RG, `vmrestore-proxy-${LOC}-nic`);
    assert.notEqual(seeded.ipConfigurations?.[0].privateIPAddress, ip);

    await assert.rejects(
      c.network.networkInterfaces.beginCreateOrUpdateAndWait(RG, 'bad-nic', {
        location: LOC,
        ipConfigurations: [{ name: 'ipconfig1', subnet: { id: subnetId.replace('default', 'nosuch') } }],
      }),
      restError('InvalidResourceReference', 400),
    );
    await c.network.networkInterfaces.beginCreateOrUpdateAndWait(RG, 'spare-nic', {
      location: LOC,
      ipConfigurations: [{ name: 'ipconfig1', subnet: { id: subnetId } }],
    });
  });

  it('lists NICs, VNets and storage accounts of one resource group through the real SDK clients', async () => {
    const other = `${RG}-lists`;
    const created = await request(sim, 'PUT', `/subscriptions/${SUB}/resourceGroups/${other}?api-version=2021-04-01`, { location: LOC });
    assert.equal(created.status, 201);
    await c.network.virtualNetworks.beginCreateOrUpdateAndWait(other, 'vnet-lists', {
      location: LOC,
      addressSpace: { addressPrefixes: ['10.30.0.0/16'] },
      subnets: [{ name: 'default', addressPrefix: '10.30.1.0/24' }],
    });
    const otherSubnet = `/subscriptions/${SUB}/resourceGroups/${other}/providers/Microsoft.Network/virtualNetworks/vnet-lists/subnets/default`;
    await c.network.networkInterfaces.beginCreateOrUpdateAndWait(other, 'nic-lists', {
      location: LOC,
      ipConfigurations: [{ name: 'ipconfig1', subnet: { id: otherSubnet } }],
    });
    const storage = new StorageManagementClient(stubCredential, SUB, {
      endpoint: sim.endpoint,
      agent: new https.Agent({ ca: fs.readFileSync(sim.caCertPath ?? '') }),
    });
    const names = async (items: AsyncIterable<{ name?: string }>): Promise<string[]> => {
      const out: string[] = [];
      for await (const r of items) out.push(r.name ?? '(no name)');
      return out.sort();
    };
    const inRg = async (items: AsyncIterable<{ id?: string; name?: string }>, rg: string): Promise<string[]> => {
      const out: string[] = [];
      for await (const r of items) if (r.id?.toLowerCase().includes(`/resourcegroups/${rg.toLowerCase()}/`)) out.push(r.name ?? '');
      return out.sort();
    };

    const nicsInRg = await inRg(c.network.networkInterfaces.listAll(), RG);
    assert.ok(nicsInRg.includes('web01-nic') && nicsInRg.includes('spare-nic'), `subscription-wide NICs in ${RG}: ${nicsInRg.join(', ')}`);
    assert.deepEqual(await names(c.network.networkInterfaces.list(RG)), nicsInRg);
    assert.deepEqual(await names(c.network.networkInterfaces.list(other)), ['nic-lists']);
    assert.deepEqual(await names(c.network.virtualNetworks.list(RG)), ['vnet-lab']);
    assert.deepEqual(await names(c.network.virtualNetworks.list(other)), ['vnet-lists']);
    assert.deepEqual(await names(storage.storageAccounts.listByResourceGroup(RG)), ['stagingsa']);
    assert.deepEqual(await names(storage.storageAccounts.listByResourceGroup(other)), []);
    assert.deepEqual(await names(storage.storageAccounts.list()), ['stagingsa']);

    await c.network.networkInterfaces.beginDeleteAndWait(other, 'nic-lists');
    assert.deepEqual(await names(c.network.networkInterfaces.list(other)), []);
  });

  const web01 = () => ({
    location: LOC,
    hardwareProfile: { vmSize: 'Standard_B2s' },
    storageProfile: {
      osDisk: { osType: 'Linux' as const, createOption: 'Attach' as const, managedDisk: { id: diskId('web01-os') } },
      dataDisks: [{ lun: 0, createOption: 'Attach' as const, managedDisk: { id: diskId('web01-data') } }],
    },
    networkProfile: { networkInterfaces: [{ id: nicId('web01-nic'), primary: true }] },
  });

  it('creates a VM from the imported OS disk with a data disk', async () => {
    const vm = await c.compute.virtualMachines.createOrUpdate(RG, 'web01', web01());
    assert.equal(vm.provisioningState, 'Succeeded');
    assert.equal(vm.storageProfile?.dataDisks?.[0].managedDisk?.id, diskId('web01-data'));
    assert.equal(await powerState(c, 'web01'), 'PowerState/running');
    const view = await c.compute.virtualMachines.instanceView(RG, 'web01');
    assert.equal(view.hyperVGeneration, 'V1');
    assert.ok(view.statuses?.some((s) => s.code === 'ProvisioningState/succeeded'));

    const os = await c.compute.disks.get(RG, 'web01-os');
    assert.equal(os.diskState, 'Attached');
    assert.equal(os.managedBy, vm.id);
    const nic = await c.network.networkInterfaces.get(RG, 'web01-nic');
    assert.equal(nic.virtualMachine?.id, vm.id);

    const gen2OnAv2 = {
      ...web01(),
      hardwareProfile: { vmSize: 'Standard_A1_v2' },
      storageProfile: { osDisk: { osType: 'Linux' as const, createOption: 'Attach' as const, managedDisk: { id: diskId('web01-gen2') } } },
      networkProfile: { networkInterfaces: [{ id: nicId('spare-nic') }] },
    };
    await assert.rejects(
      c.compute.virtualMachines.createOrUpdate(RG, 'gen2vm', gen2OnAv2),
      restError('BadRequest', 400, /cannot boot Hypervisor Generation '2'/),
    );
    await assert.rejects(
      c.compute.virtualMachines.createOrUpdate(RG, 'gen2vm', { ...gen2OnAv2, hardwareProfile: { vmSize: 'Standard_Z99' } }),
      restError('InvalidParameter', 400, /VM size is not valid/),
    );
    await assert.rejects(
      c.compute.virtualMachines.createOrUpdate(RG, 'web02', {
        ...web01(),
        networkProfile: { networkInterfaces: [{ id: nicId('spare-nic') }] },
      }),
      restError('OperationNotAllowed', 409, /already attached/),
    );
    await assert.rejects(
      c.compute.virtualMachines.createOrUpdate(RG, 'web03', {
        ...gen2OnAv2,
        hardwareProfile: { vmSize: 'Standard_B2s' },
        networkProfile: { networkInterfaces: [{ id: nicId('web01-nic') }] },
      }),
      restError('NicInUse', 400),
    );
    await assert.rejects(c.compute.virtualMachines.get(RG, 'gen2vm'), restError('ResourceNotFound', 404));
  });

  it('treats a repeated identical PUT as idempotent', async () => {
    const seq = await lastSeq(sim);
    const again = await c.compute.virtualMachines.createOrUpdate(RG, 'web01', web01());
    assert.equal(again.provisioningState, 'Succeeded');
    const entries = await logSince(sim, seq);
    assert.deepEqual(
      entries.map((e) => `${e.method} ${e.status}`),
      ['PUT 200'],
      'an unchanged PUT answers 200 with the resource and starts no operation',
    );
  });

  it('honours If-None-Match: * and If-Match on PUT with 412, as ARM does', async () => {
    const before = await c.compute.virtualMachines.get(RG, 'web01');
    await assert.rejects(
      c.compute.virtualMachines.createOrUpdate(RG, 'web01', { ...web01(), tags: { taken: 'yes' } }, { ifNoneMatch: '*' }),
      restError('PreconditionFailed', 412, /already exists/),
    );
    assert.deepEqual((await c.compute.virtualMachines.get(RG, 'web01')).tags, before.tags, 'the VM was not changed');
    const disk = await c.compute.disks.get(RG, 'web01-os');
    await assert.rejects(
      c.compute.disks.createOrUpdate(
        RG,
        'web01-os',
        { location: LOC, tags: { taken: 'yes' } },
        { requestOptions: { headers: { 'If-None-Match': '*' } } },
      ),
      restError('PreconditionFailed', 412),
    );
    assert.deepEqual((await c.compute.disks.get(RG, 'web01-os')).tags, disk.tags);
    await assert.rejects(
      c.network.networkInterfaces.beginCreateOrUpdateAndWait(
        RG,
        'web01-nic',
        { location: LOC, ipConfigurations: [{ name: 'ipconfig1', subnet: { id: subnetId } }] },
        { requestOptions: { headers: { 'If-None-Match': '*' } } },
      ),
      restError('PreconditionFailed', 412),
    );
    await assert.rejects(
      c.compute.virtualMachines.createOrUpdate(RG, 'nosuchvm', web01(), { ifMatch: '*' }),
      restError('PreconditionFailed', 412, /does not exist/),
    );
    await assert.rejects(c.compute.virtualMachines.get(RG, 'nosuchvm'), restError('ResourceNotFound', 404));
    const fresh = await c.network.networkInterfaces.beginCreateOrUpdateAndWait(
      RG,
      'conditional-nic',
      { location: LOC, ipConfigurations: [{ name: 'ipconfig1', subnet: { id: subnetId } }] },
      { requestOptions: { headers: { 'If-None-Match': '*' } } },
    );
    assert.equal(fresh.provisioningState, 'Succeeded', 'an absent resource is created');
    await c.network.networkInterfaces.beginDeleteAndWait(RG, 'conditional-nic');
  });

  it('runs power operations and reports them in the instance view', async () => {
    const seq = await lastSeq(sim);
    await c.compute.virtualMachines.powerOff(RG, 'web01');
    assert.equal(await powerState(c, 'web01'), 'PowerState/stopped');
    await c.compute.virtualMachines.deallocate(RG, 'web01');
    assert.equal(await powerState(c, 'web01'), 'PowerState/deallocated');
    assert.equal((await c.compute.disks.get(RG, 'web01-os')).diskState, 'Reserved');
    await c.compute.virtualMachines.start(RG, 'web01');
    assert.equal(await powerState(c, 'web01'), 'PowerState/running');

    const entries = await logSince(sim, seq);
    const count = (re: RegExp) => entries.filter((e) => e.method === 'POST' && re.test(e.path)).length;
    assert.equal(count(/\/powerOff$/), 1);
    assert.equal(count(/\/deallocate$/), 1);
    assert.equal(count(/\/start$/), 1);
    const polls = entries.filter((e) => /\/locations\/westeurope\/operations\//.test(e.path));
    assert.equal(polls.length, 6, 'each operation: one Azure-AsyncOperation poll plus the final GET on Location');
    assert.ok(polls.every((e) => e.status === 200));

    // More polls per operation: the SDK keeps polling until Succeeded (interval shortened here), and
    // reads in between see the transitional state.
    await request(sim, 'POST', '/_admin/config', { lroPolls: 3 });
    const seq2 = await lastSeq(sim);
    const restart = c.compute.virtualMachines.restart(RG, 'web01', { updateIntervalInMs: 10 });
    await restart.submitted();
    assert.equal(await powerState(c, 'web01'), 'PowerState/starting');
    await restart;
    await request(sim, 'POST', '/_admin/config', { lroPolls: 1 });
    assert.equal(await powerState(c, 'web01'), 'PowerState/running');
    const polls2 = (await logSince(sim, seq2)).filter((e) => e.path.includes('/operations/'));
    assert.equal(polls2.length, 4);
  });

  it('runs commands and records the scripts', async () => {
    await request(sim, 'POST', '/_admin/runCommandResponses', { rules: [{ vmName: 'web01', match: 'hostname', stdout: 'web01' }] });
    const res = await c.compute.virtualMachines.runCommand(RG, 'web01', { commandId: 'RunShellScript', script: ['hostname', 'uname -r'] });
    assert.equal(res.value?.[0].code, 'ProvisioningState/succeeded');
    assert.match(res.value?.[0].message ?? '', /^Enable succeeded: \n\[stdout\]\nweb01\n\[stderr\]\n/);
    const recorded = await request<{ runCommands: Array<{ vmName: string; script: string[] }> }>(sim, 'GET', '/_admin/runCommands');
    assert.deepEqual(recorded.body.runCommands.at(-1), {
      ...recorded.body.runCommands.at(-1),
      vmName: 'web01',
      script: ['hostname', 'uname -r'],
    });

    const win = await c.compute.virtualMachines.runCommand(RG, 'legacy01', { commandId: 'RunPowerShellScript', script: ['Get-Disk'] });
    assert.deepEqual(
      win.value?.map((v) => v.code),
      ['ComponentStatus/StdOut/succeeded', 'ComponentStatus/StdErr/succeeded'],
    );
    await assert.rejects(
      c.compute.virtualMachines.runCommand(RG, 'web01', { commandId: 'RunPowerShellScript', script: ['x'] }),
      restError('InvalidParameter', 400),
    );
    await assert.rejects(
      c.compute.virtualMachines.runCommand(RG, `vmrestore-helper-${LOC}`, { commandId: 'RunShellScript', script: ['true'] }),
      restError('OperationNotAllowed', 409, /deallocated/),
    );
  });

  it('enforces delete order and swaps data disks with attachDetachDataDisks', async () => {
    await assert.rejects(c.compute.disks.delete(RG, 'web01-data'), restError('OperationNotAllowed', 409, /is attached to VM/));
    await assert.rejects(c.network.networkInterfaces.beginDeleteAndWait(RG, 'web01-nic'), restError('NicInUse', 400));

    const profile = await c.compute.virtualMachines.attachDetachDataDisks(RG, 'web01', {
      dataDisksToDetach: [{ diskId: diskId('web01-data') }],
      dataDisksToAttach: [{ diskId: diskId('scratch'), lun: 3 }],
    });
    assert.deepEqual(
      profile.dataDisks?.map((d) => [d.lun, d.name]),
      [[3, 'scratch']],
    );
    assert.equal((await c.compute.disks.get(RG, 'web01-data')).diskState, 'Unattached');
    await c.compute.disks.delete(RG, 'web01-data');
    await assert.rejects(c.compute.disks.get(RG, 'web01-data'), restError('ResourceNotFound', 404));

    const patched = await c.compute.virtualMachines.update(RG, 'web01', { tags: { restoredBy: 'vmrestore' } });
    assert.deepEqual(patched.tags, { restoredBy: 'vmrestore' });
    assert.equal(patched.storageProfile?.dataDisks?.length, 1);

    // Detach again through a PUT of the whole model (the path without attachDetachDataDisks).
    const vm = await c.compute.virtualMachines.get(RG, 'web01');
    await c.compute.virtualMachines.createOrUpdate(RG, 'web01', {
      location: LOC,
      hardwareProfile: vm.hardwareProfile,
      storageProfile: { osDisk: vm.storageProfile?.osDisk, dataDisks: [] },
      networkProfile: vm.networkProfile,
    });
    assert.equal((await c.compute.disks.get(RG, 'scratch')).diskState, 'Unattached');
  });

  it('lets the SDK retry throttling and transient errors transparently', async () => {
    const seq = await lastSeq(sim);
    const set = await request<{ rules: Array<{ id: string; kind: string }> }>(sim, 'POST', '/_admin/faults', {
      rules: [
        { method: 'GET', pathPattern: '/virtualMachines/web01$', kind: 'throttle', count: 2 },
        { method: 'PUT', pathPattern: '/networkInterfaces/', kind: 'transient', count: 1 },
        { method: 'GET', pathPattern: '/disks/scratch$', kind: 'transient', status: 500, count: 1 },
      ],
    });
    assert.deepEqual(
      set.body.rules.map((r) => r.kind),
      ['throttle', 'transient', 'transient'],
    );
    assert.equal((await request(sim, 'POST', '/_admin/faults', { rules: [{ kind: 'nonsense' }] })).status, 400);
    const vm = await c.compute.virtualMachines.get(RG, 'web01');
    assert.equal(vm.name, 'web01');
    const nic = await c.network.networkInterfaces.beginCreateOrUpdateAndWait(RG, 'retry-nic', {
      location: LOC,
      ipConfigurations: [{ name: 'ipconfig1', subnet: { id: subnetId } }],
    });
    assert.equal(nic.provisioningState, 'Succeeded');
    assert.equal((await c.compute.disks.get(RG, 'scratch')).name, 'scratch');
    const fired = await request<{ rules: Array<{ fired: number }> }>(sim, 'GET', '/_admin/faults');
    assert.deepEqual(
      fired.body.rules.map((r) => r.fired),
      [2, 1, 1],
    );
    await request(sim, 'DELETE', '/_admin/faults');

    const entries = await logSince(sim, seq);
    const vmGets = entries.filter((e) => e.method === 'GET' && e.path.endsWith('/virtualMachines/web01'));
    assert.deepEqual(
      vmGets.map((e) => e.status),
      [429, 429, 200],
    );
    assert.ok(vmGets.slice(0, 2).every((e) => e.fault === 'throttle'));
    const nicPuts = entries.filter((e) => e.method === 'PUT' && e.path.endsWith('/retry-nic'));
    assert.deepEqual(
      nicPuts.map((e) => e.status),
      [503, 201],
    );
    const diskGets = entries.filter((e) => e.path.endsWith('/disks/scratch'));
    assert.deepEqual(
      diskGets.map((e) => e.status),
      [500, 200],
    );
  });

  it('surfaces non-retryable errors: injected quota, real quota, failed operations', async () => {
    sim.setFaults([{ method: 'PUT', pathPattern: '/virtualMachines/[^/]+$', kind: 'quota', count: 1 }]);
    const big = {
      location: LOC,
      hardwareProfile: { vmSize: 'Standard_D4s_v3' },
      storageProfile: { osDisk: { osType: 'Linux' as const, createOption: 'Attach' as const, managedDisk: { id: diskId('web01-gen2') } } },
      networkProfile: { networkInterfaces: [{ id: nicId('spare-nic') }] },
    };
    await assert.rejects(
      c.compute.virtualMachines.createOrUpdate(RG, 'big01', big),
      restError('OperationNotAllowed', 409, /exceeding approved standardDSv3Family Cores quota/),
    );
    sim.clearFaults();

    await request(sim, 'POST', '/_admin/config', { quotas: { families: { standardDSv3Family: 2 } } });
    await assert.rejects(
      c.compute.virtualMachines.createOrUpdate(RG, 'big01', big),
      restError('OperationNotAllowed', 409, /Current Limit: 2, Current Usage: 0, Additional Required: 4/),
    );
    await request(sim, 'POST', '/_admin/config', { quotas: { families: { standardDSv3Family: 350 } } });
    const usage = [];
    for await (const u of c.compute.usage.list(LOC)) usage.push(u);
    assert.ok(usage.some((u) => u.name.value === 'cores' && u.currentValue > 0));

    sim.setFaults([{ method: 'POST', pathPattern: '/web01/start$', kind: 'lroFailure', count: 1 }]);
    await c.compute.virtualMachines.deallocate(RG, 'web01');
    await assert.rejects(c.compute.virtualMachines.start(RG, 'web01'), /AllocationFailed/);
    const view = await c.compute.virtualMachines.instanceView(RG, 'web01');
    assert.ok(view.statuses?.some((s) => s.code === 'ProvisioningState/failed/AllocationFailed'));
    assert.ok(view.statuses?.some((s) => s.code === 'PowerState/deallocated'));
    sim.clearFaults();
    await c.compute.virtualMachines.start(RG, 'web01');
    assert.equal(await powerState(c, 'web01'), 'PowerState/running');
  });

  it('keeps its resources across a restart', async () => {
    const before = sim.endpoint;
    await sim.close();
    await start();
    assert.notEqual(sim.endpoint, undefined);
    assert.ok(before.startsWith('https://'));
    const vm = await c.compute.virtualMachines.get(RG, 'web01', { expand: 'instanceView' });
    assert.equal(vm.provisioningState, 'Succeeded');
    assert.ok(vm.instanceView?.statuses?.some((s) => s.code === 'PowerState/running'));
    assert.equal((await c.compute.disks.get(RG, 'web01-gen2')).hyperVGeneration, 'V2');
    assert.equal((await c.network.networkInterfaces.get(RG, 'web01-nic')).virtualMachine?.id, vm.id);
    const vms = [];
    for await (const v of c.compute.virtualMachines.list(RG)) vms.push(v.name);
    assert.deepEqual(vms.sort(), ['legacy01', 'vmrestore-helper-westeurope', 'vmrestore-proxy-westeurope', 'web01']);
  });

  it('releases disks and NICs when a VM is deleted', async () => {
    await c.compute.virtualMachines.delete(RG, 'web01');
    await assert.rejects(c.compute.virtualMachines.get(RG, 'web01'), restError('ResourceNotFound', 404));
    const os = await c.compute.disks.get(RG, 'web01-os');
    assert.equal(os.diskState, 'Unattached');
    assert.equal(os.managedBy, undefined);
    await c.compute.disks.delete(RG, 'web01-os');
    await c.network.networkInterfaces.beginDeleteAndWait(RG, 'web01-nic');
    await assert.rejects(c.network.networkInterfaces.get(RG, 'web01-nic'), restError('ResourceNotFound', 404));
    // Deleting what is already gone is a no-op, as in ARM (204).
    await c.compute.disks.delete(RG, 'web01-os');
  });

  it('also serves plain http for clients without the bearer policy', async () => {
    const plain = await startArmSimulator({
      stateDir: path.join(tmp, 'armsim-http'),
      subscriptionId: SUB,
      tls: false,
      blob: { endpoint: azurite.endpoint, accountName: ACCOUNT, accountKey: KEY },
      seed: SEED,
    });
    try {
      assert.ok(plain.endpoint.startsWith('http://'));
      assert.equal(plain.caCertPath, undefined);
      const pc = createArmClients({ endpoint: plain.endpoint, subscriptionId: SUB });
      const vm = await pc.compute.virtualMachines.get(RG, 'legacy01');
      assert.equal(vm.hardwareProfile?.vmSize, 'Standard_DS1_v2');
      const nic = await pc.network.networkInterfaces.get(RG, 'legacy01-nic');
      assert.equal(nic.virtualMachine?.id, vm.id);
      await pc.compute.virtualMachines.deallocate(RG, 'legacy01');
    } finally {
      await plain.close();
    }
  });

  it('admin endpoints need the admin token and a loopback peer, wherever ARM listens', async () => {
    const open = await startArmSimulator({
      stateDir: path.join(tmp, 'armsim-admin'),
      subscriptionId: SUB,
      host: '0.0.0.0',
      tls: false,
      blob: { endpoint: azurite.endpoint, accountName: ACCOUNT, accountKey: KEY },
      seed: SEED,
    });
    try {
      const file = path.join(tmp, 'armsim-admin', 'admin-token');
      assert.equal(fs.readFileSync(file, 'utf8').trim(), open.adminToken);
      assert.equal(fs.statSync(file).mode & 0o077, 0, 'the token file is private');
      const anonymous = { endpoint: open.endpoint };
      const fault = { rules: [{ kind: 'error', status: 500 }] };
      const noToken = await request<{ error: { code: string } }>(anonymous, 'POST', '/_admin/faults', fault);
      assert.equal(noToken.status, 401);
      assert.equal(noToken.body.error.code, 'AdminUnauthorized');
      const wrong = await request(anonymous, 'GET', '/_admin/state', undefined, { 'x-admin-token': `${open.adminToken}x` });
      assert.equal(wrong.status, 401);
      assert.deepEqual(open.setFaults([]), [], 'the refused requests set no fault');
      assert.equal((await request(open, 'GET', '/_admin/health')).status, 200);

      // The same request with the right token, from this machine's non-loopback address.
      const external = Object.values(os.networkInterfaces())
        .flat()
        .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
      assert.ok(external, 'this machine has a non-loopback IPv4 address to test from');
      const port = new URL(open.endpoint).port;
      const viaLan = { endpoint: `http://${external}:${port}`, adminToken: open.adminToken };
      const refused = await request<{ error: { code: string; message: string } }>(viaLan, 'POST', '/_admin/faults', fault);
      assert.equal(refused.status, 403);
      assert.equal(refused.body.error.code, 'AdminForbidden');
      assert.match(refused.body.error.message, new RegExp(external.replace(/\./g, '\\.')));
      assert.deepEqual(open.setFaults([]), []);
      // ARM itself still answers there.
      const pc = createArmClients({ endpoint: viaLan.endpoint, subscriptionId: SUB });
      assert.equal((await pc.compute.virtualMachines.get(RG, 'legacy01')).name, 'legacy01');
    } finally {
      await open.close();
    }
  });

  it('signs in an app registration through its identity endpoint and accepts only the tokens it issued', async () => {
    const principal = {
      tenantId: '11111111-2222-4333-8444-555555555555',
      clientId: '0f0f0f0f-1111-4222-8333-444444444444',
      clientSecret: 's3cr3t~value',
    };
    const strict = await startArmSimulator({
      stateDir: path.join(tmp, 'armsim-identity'),
      subscriptionId: SUB,
      blob: { endpoint: azurite.endpoint, accountName: ACCOUNT, accountKey: KEY },
      seed: SEED,
      principals: [principal],
      onlyIssuedTokens: true,
    });
    try {
      const secretFile = path.join(tmp, 'client-secret');
      fs.writeFileSync(secretFile, principal.clientSecret + '\n');
      const cfg = {
        type: 'clientSecret' as const,
        tenantId: principal.tenantId,
        clientId: principal.clientId,
        authorityHost: strict.endpoint,
      };
      const credential = createAzureCredential({ ...cfg, clientSecretFile: secretFile }, { caCertPath: strict.caCertPath });
      const signedIn = createArmClients({ endpoint: strict.endpoint, subscriptionId: SUB, caCertPath: strict.caCertPath, credential });
      const vm = await signedIn.compute.virtualMachines.get(RG, 'legacy01');
      assert.equal(vm.name, 'legacy01');
      const last = strict.requestLog().at(-1)!;
      assert.equal(last.status, 200);
      assert.equal(last.principal, principal.clientId, 'the request carried a token issued to the app');

      // A token from nowhere is refused, as ARM refuses tokens Entra ID did not issue.
      const stub = createArmClients({
        endpoint: strict.endpoint,
        subscriptionId: SUB,
        caCertPath: strict.caCertPath,
        retryOptions: { maxRetries: 0 },
      });
      await assert.rejects(stub.compute.virtualMachines.get(RG, 'legacy01'), restError('InvalidAuthenticationToken', 401));

      // A wrong secret fails the sign-in with the platform's error code.
      const wrong = createAzureCredential(
        { ...cfg, clientSecretEnv: 'ARMSIM_TEST_SECRET' },
        { caCertPath: strict.caCertPath, env: { ARMSIM_TEST_SECRET: 'nope' } },
      );
      await assert.rejects(wrong.getToken('https://management.azure.com/.default'), /AADSTS7000215/);
      assert.throws(() => createAzureCredential({ ...cfg, clientSecretEnv: 'UNSET_VAR' }, { env: {} }), /UNSET_VAR is not set/);
    } finally {
      await strict.close();
    }
  });

  it('builds clients for real Azure when no endpoint is given', async () => {
    const scopes: string[] = [];
    const seen: Array<{ url: string; auth?: string }> = [];
    const real = createArmClients({
      subscriptionId: SUB,
      credential: {
        getToken: async (s: string | string[]) => {
          scopes.push(...(Array.isArray(s) ? s : [s]));
          return { token: 'real-token', expiresOnTimestamp: Date.now() + 3600e3 };
        },
      },
    });
    // Answer locally instead of sending: this only checks where and how the clients would call.
    const capture = {
      name: 'capture',
      sendRequest: async (req: { url: string; headers: { get(n: string): string | undefined } }) => {
        seen.push({ url: req.url, auth: req.headers.get('authorization') });
        const h = new Map([['content-type', 'application/json']]);
        const headers = {
          get: (n: string) => h.get(n.toLowerCase()),
          has: (n: string) => h.has(n.toLowerCase()),
          set: (n: string, v: string) => void h.set(n.toLowerCase(), v),
          delete: (n: string) => void h.delete(n.toLowerCase()),
          toJSON: () => Object.fromEntries(h),
          [Symbol.iterator]: () => h.entries(),
        };
        return { request: req, status: 200, headers, bodyAsText: JSON.stringify({ id: 'x', name: 'vm', location: LOC }) };
      },
    };
    real.compute.pipeline.addPolicy(capture as never, { afterPhase: 'Sign' });
    real.network.pipeline.addPolicy(capture as never, { afterPhase: 'Sign' });
    await real.compute.virtualMachines.get(RG, 'vm');
    await real.network.networkInterfaces.get(RG, 'nic');
    assert.deepEqual(
      seen.map((x) => new URL(x.url).origin),
      ['https://management.azure.com', 'https://management.azure.com'],
    );
    assert.ok(seen.every((x) => x.auth === 'Bearer real-token'));
    assert.ok(scopes.every((x) => x === 'https://management.azure.com/.default'));
    assert.throws(() => createArmClients({ subscriptionId: SUB }), /credential is required/);
  });

  it('runs as a CLI child process that prints its endpoint', async () => {
    const proc = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        path.join(ROOT, 'src/lab/armsim/main.ts'),
        '--state-dir',
        path.join(tmp, 'armsim-cli'),
        '--subscription-id',
        SUB,
        '--blob-endpoint',
        azurite.endpoint,
        '--blob-account',
        ACCOUNT,
        '--blob-key',
        KEY,
        '--seed',
        JSON.stringify(SEED),
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      const line = await new Promise<string>((resolve, reject) => {
        readline.createInterface({ input: proc.stdout as NodeJS.ReadableStream }).once('line', resolve);
        proc.once('exit', (code) => reject(new Error(`armsim CLI exited with ${String(code)}`)));
      });
      const ready = JSON.parse(line) as { endpoint: string; caCertPath: string };
      assert.match(ready.endpoint, /^https:\/\/127\.0\.0\.1:\d+$/);
      const cc = createArmClients({ endpoint: ready.endpoint, subscriptionId: SUB, caCertPath: ready.caCertPath });
      const vm = await cc.compute.virtualMachines.get(RG, `vmrestore-proxy-${LOC}`);
      assert.equal(vm.hardwareProfile?.vmSize, 'Standard_B2s');
    } finally {
      await stopProcess(proc);
    }
    assert.equal(proc.exitCode, 0);
  });
});
