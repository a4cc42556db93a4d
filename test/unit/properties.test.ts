/**
 * Property-based tests of everything a caller or an operator hands the restore: requests (vSphere and
 * Azure), vm.json, the config file and the restore points read back from the repository. Whatever the
 * values, the outcome is either acceptance or a RestoreError of the validation kind that names the field.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { parseSubnetId } from '../../src/activities/azure';
import { parseConfig } from '../../src/config';
import { AZURE_LIMITS, assertAzureDiskSize } from '../../src/azure/vhd';
import { DISK_FORMATS, TRANSPORT_REQUESTS } from '../../src/domain/vsphere';
import { FailureType, RestoreError } from '../../src/domain/errors';
import { validateAzureRestoreRequest, validateVSphereRestoreRequest, validateVSphereVmName } from '../../src/domain/validation';
import { getRestorePoint } from '../../src/repository';
import { readVmJson } from '../../src/repository/vm-json';
import { pathInside } from '../../src/transport/paths';
import { AZURE_FIELDS, VSPHERE_FIELDS, anyFieldValue, badRequest, hostileJson, hostileString } from '../helpers/bad-requests';

const RUNS = { numRuns: 300 };
const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;

/** Passes when `fn` returns, or throws a RestoreError of `type` whose message passes `names`. */
function acceptsOrNames(fn: () => unknown, type: string, names: (message: string) => boolean): void {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof RestoreError, `expected a RestoreError, got ${(err as Error)?.stack ?? String(err)}`);
    assert.equal(err.type, type, err.message);
    assert.ok(names(err.message), `message does not name the field: ${err.message}`);
  }
}

function refusedNaming(fn: () => unknown, type: string, names: (message: string) => boolean): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof RestoreError, `expected a RestoreError, got ${(err as Error)?.stack ?? String(err)}`);
    assert.equal(err.type, type, err.message);
    assert.ok(names(err.message), `message does not name the field: ${err.message}`);
    return true;
  });
}

const vsphereBase = {
  restorePointId: 'rp-20260101000000-abcdef',
  vmName: 'web01-restored',
  datastore: 'LocalDS_0',
  networkMap: { 'VM Network': 'DR Network' },
  transport: 'auto',
  diskFormat: 'same',
  throttleMBps: 100,
  diskConcurrency: 2,
};
const azureBase = {
  restorePointId: 'rp-20260101000000-abcdef',
  vmName: 'web01',
  resourceGroup: 'rg-dr',
  location: 'westeurope',
  generation: 1,
};
const validateVSphere = (r: unknown) => validateVSphereRestoreRequest(r, TRANSPORT_REQUESTS, DISK_FORMATS);

describe('restore requests: any field value is accepted or refused naming the field', () => {
  it('vSphere: a value that is never valid is refused, naming its field', () => {
    validateVSphere(vsphereBase);
    fc.assert(
      fc.property(badRequest(vsphereBase, VSPHERE_FIELDS), ({ field, request }) =>
        refusedNaming(
          () => validateVSphere(request),
          FailureType.InvalidRequest,
          (m) => m.includes(`request field ${field}`),
        ),
      ),
      RUNS,
    );
  });
  it('vSphere: arbitrary JSON in any field never crashes validation', () => {
    fc.assert(
      fc.property(anyFieldValue(vsphereBase, VSPHERE_FIELDS), ({ field, request }) =>
        acceptsOrNames(
          () => validateVSphere(request),
          FailureType.InvalidRequest,
          (m) => m.includes(`request field ${field}`),
        ),
      ),
      RUNS,
    );
    fc.assert(
      fc.property(hostileJson, (raw) =>
        acceptsOrNames(
          () => validateVSphere(raw),
          FailureType.InvalidRequest,
          (m) => /request field \w+|restore request must be an object/.test(m),
        ),
      ),
      RUNS,
    );
  });
  it('Azure: a value that is never valid is refused, naming its field', () => {
    validateAzureRestoreRequest(azureBase);
    fc.assert(
      fc.property(badRequest(azureBase, AZURE_FIELDS), ({ field, request }) =>
        refusedNaming(
          () => validateAzureRestoreRequest(request),
          FailureType.InvalidRequest,
          (m) => m.includes(`request field ${field}`),
        ),
      ),
      RUNS,
    );
  });
  it('Azure: arbitrary JSON in any field never crashes validation', () => {
    fc.assert(
      fc.property(anyFieldValue(azureBase, AZURE_FIELDS), ({ field, request }) =>
        acceptsOrNames(
          () => validateAzureRestoreRequest(request),
          FailureType.InvalidRequest,
          (m) => m.includes(`request field ${field}`),
        ),
      ),
      RUNS,
    );
  });
  it('vSphere VM names: ., .., separators, NUL and control characters, over 80 characters are refused', () => {
    for (const name of ['.', '..', 'a/b', '../etc', 'a\\b', 'nul\u0000byte', 'tab\there', 'del\u007f', 'x'.repeat(81), '']) {
      refusedNaming(
        () => validateVSphereVmName(name),
        FailureType.InvalidRequest,
        (m) => /VM name/.test(m),
      );
    }
    fc.assert(
      fc.property(
        fc.tuple(
          fc.string({ maxLength: 20 }),
          fc.constantFrom('/', '\\', '\u0000', '\n', '\u001f', '\u0085', '\u2028'),
          fc.string({ maxLength: 20 }),
        ),
        ([a, bad, b]) =>
          refusedNaming(
            () => validateVSphereVmName(`x${a}${bad}${b}x`),
            FailureType.InvalidRequest,
            (m) => /VM name/.test(m),
          ),
      ),
      RUNS,
    );
  });
  it('a subnet id naming another subscription is refused, naming both', () => {
    const ours = '00000000-0000-4000-8000-00000000ab01';
    assert.deepEqual(
      parseSubnetId(`/subscriptions/${ours.toUpperCase()}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s`, ours),
      {
        resourceGroup: 'rg',
        vnet: 'v',
        subnet: 's',
      },
    );
    fc.assert(
      fc.property(
        fc.uuid().filter((u) => u !== ours),
        (other) =>
          refusedNaming(
            () => parseSubnetId(`/subscriptions/${other}/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s`, ours),
            FailureType.InvalidRequest,
            (m) => m.includes(other) && m.includes(ours),
          ),
      ),
      RUNS,
    );
    fc.assert(
      fc.property(hostileString, (id) =>
        acceptsOrNames(
          () => parseSubnetId(id, ours),
          FailureType.InvalidRequest,
          (m) => /subnet/.test(m),
        ),
      ),
      RUNS,
    );
  });
  it('a disk over the 8 TiB page-blob limit is refused up front, naming the disk, though managed disks take 32 TiB', () => {
    refusedNaming(
      () => assertAzureDiskSize(9 * TiB, { os: false, target: 'pageBlob', diskName: 'big01 disk 1 (data)' }),
      FailureType.AzureLimit,
      (m) => m.includes("'big01 disk 1 (data)'") && /8 TiB|page blob/.test(m),
    );
    fc.assert(
      fc.property(fc.integer({ min: AZURE_LIMITS.pageBlobMaxBytes - 511, max: 32 * TiB }), (capacity) =>
        refusedNaming(
          () => assertAzureDiskSize(capacity, { os: false, target: 'pageBlob', diskName: 'd7' }),
          FailureType.AzureLimit,
          (m) => m.includes("'d7'"),
        ),
      ),
      RUNS,
    );
  });
});

describe('target paths stay inside the proxy mount', () => {
  it('joined datastore paths that would leave the root are refused; others resolve inside', () => {
    const root = '/mnt/proxy/LocalDS_0';
    const segment = fc.oneof(
      fc.constantFrom('..', '.', '', 'vm', 'vm.vmdk', '..\u0000', '/', '/etc', 'a/../..'),
      fc.string({ maxLength: 8 }),
    );
    fc.assert(
      fc.property(fc.array(segment, { minLength: 1, maxLength: 6 }), (parts) => {
        const rel = parts.join('/');
        try {
          const p = pathInside(root, rel, 'test');
          assert.ok(p.startsWith(root + path.sep), `${JSON.stringify(rel)} resolved to ${p}, outside ${root}`);
        } catch (err) {
          assert.ok(err instanceof RestoreError && err.type === FailureType.InvalidRequest, String(err));
          assert.ok(err.message.includes(JSON.stringify(rel)), err.message);
        }
      }),
      { numRuns: 1000 },
    );
    assert.throws(() => pathInside(root, '../LocalDS_1/x-flat.vmdk', 'direct-nas'), /leaves \/mnt\/proxy\/LocalDS_0/);
    assert.throws(() => pathInside(root, 'vm/../../../../etc/shadow', 'hotadd'), /leaves/);
    assert.equal(pathInside(root, 'vm/vm-flat.vmdk', 'nbd'), '/mnt/proxy/LocalDS_0/vm/vm-flat.vmdk');
  });
});

describe('vm.json: hostile values give one validation error naming each bad key', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-props-'));
    writeFileSync(path.join(dir, 'disk0.img'), Buffer.alloc(MiB));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const base = () => ({
    name: 'web01',
    guestOs: 'linux',
    firmware: 'bios',
    cpus: 2,
    memoryMiB: 2048,
    nics: [{ network: 'VM Network', macAddress: '00:50:56:aa:bb:cc' }],
    disks: [{ path: 'disk0.img', provisioning: 'thin', label: 'root' }],
  });
  const keyPaths: Array<Array<string | number>> = [
    ['name'],
    ['guestOs'],
    ['firmware'],
    ['cpus'],
    ['memoryMiB'],
    ['nics'],
    ['nics', 0],
    ['nics', 0, 'network'],
    ['nics', 0, 'macAddress'],
    ['disks'],
    ['disks', 0],
    ['disks', 0, 'path'],
    ['disks', 0, 'provisioning'],
    ['disks', 0, 'label'],
    ['surprise'],
  ];
  const keyName = (p: Array<string | number>) => p.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? k : `.${k}`)).join('');

  it('accepts the valid file', async () => {
    const file = path.join(dir, 'vm.json');
    writeFileSync(file, JSON.stringify(base()));
    const src = await readVmJson(file);
    assert.equal(src.vm.disks[0].capacityBytes, MiB);
  });
  it('any value at any key is accepted or refused naming that key (or the object holding it)', async () => {
    let n = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...keyPaths), hostileJson, async (keyPath, value) => {
        const doc = base() as Record<string, unknown>;
        let at: Record<string | number, unknown> = doc;
        for (const k of keyPath.slice(0, -1)) at = at[k] as Record<string | number, unknown>;
        at[keyPath[keyPath.length - 1]] = value;
        const file = path.join(dir, `vm-${n++}.json`);
        writeFileSync(file, JSON.stringify(doc));
        const prefixes = keyPath.map((_, i) => keyName(keyPath.slice(0, i + 1)));
        try {
          await readVmJson(file);
        } catch (err) {
          assert.ok(err instanceof RestoreError, `expected a RestoreError, got ${(err as Error)?.stack ?? String(err)}`);
          assert.equal(err.type, FailureType.InvalidRequest);
          // The key itself, or one inside it (an object missing its keys), followed by what is wrong.
          assert.ok(
            prefixes.some((p) => err.message.includes(`${p} `) || err.message.includes(`${p}.`) || err.message.includes(`${p}[`)),
            `${JSON.stringify(keyPath)} = ${JSON.stringify(value)?.slice(0, 80)}: ${err.message}`,
          );
        } finally {
          rmSync(file);
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe('config: a hostile value at any key is refused naming the key', () => {
  const base = () => ({
    temporal: { address: '127.0.0.1:7233', namespace: 'default', taskQueue: 'vmrestore' },
    repository: { path: '/srv/vmrestore' },
    vsphere: {
      defaultProfile: 'prod',
      profiles: { prod: { url: 'https://vc.example.com/sdk', username: 'svc', passwordEnv: 'VC_PASS', datacenter: 'DC0' } },
    },
    proxies: [{ name: 'p1', vmName: 'proxy01', transports: ['nbd', 'hotadd'], hotaddDevices: { LocalDS_0: '/dev/disk/by-path' } }],
    restore: { diskConcurrency: 2, readConcurrency: 4 },
    azure: {
      subscriptionId: 'sub',
      resourceGroup: 'rg',
      location: 'westeurope',
      locations: ['westeurope'],
      subnetId: '/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s',
      storageAccountId: '/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa',
      proxies: [{ name: 'azp', vmName: 'azproxy', idleTimeoutSeconds: 60 }],
      helpers: { westeurope: { vmName: 'helper', idleTimeoutSeconds: 30 } },
    },
  });
  const keyPaths: Array<Array<string | number>> = [
    [],
    ['temporal'],
    ['temporal', 'address'],
    ['temporal', 'namespace'],
    ['temporal', 'taskQueue'],
    ['repository'],
    ['repository', 'path'],
    ['vsphere'],
    ['vsphere', 'defaultProfile'],
    ['vsphere', 'profiles'],
    ['vsphere', 'profiles', 'prod'],
    ['vsphere', 'profiles', 'prod', 'url'],
    ['vsphere', 'profiles', 'prod', 'username'],
    ['vsphere', 'profiles', 'prod', 'passwordEnv'],
    ['vsphere', 'profiles', 'prod', 'datacenter'],
    ['proxies'],
    ['proxies', 0],
    ['proxies', 0, 'name'],
    ['proxies', 0, 'transports'],
    ['proxies', 0, 'hotaddDevices'],
    ['restore'],
    ['restore', 'diskConcurrency'],
    ['restore', 'checkpointBytes'],
    ['azure'],
    ['azure', 'subscriptionId'],
    ['azure', 'location'],
    ['azure', 'locations'],
    ['azure', 'proxies'],
    ['azure', 'proxies', 0],
    ['azure', 'proxies', 0, 'idleTimeoutSeconds'],
    ['azure', 'helpers'],
    ['azure', 'helpers', 'westeurope'],
    ['azure', 'helpers', 'westeurope', 'vmName'],
    ['azure', 'credential'],
    ['surprise'],
  ];
  const keyName = (p: Array<string | number>) => p.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? k : `.${k}`)).join('');

  it('accepts the valid file', () => {
    const cfg = parseConfig(base(), 'test', '/etc/vmrestore');
    assert.equal(cfg.proxies[0].hotaddDevices?.LocalDS_0, '/dev/disk/by-path');
  });
  it('any JSON value at any key is accepted or refused with "config <that key or a parent>"', () => {
    fc.assert(
      fc.property(fc.constantFrom(...keyPaths), hostileJson, (keyPath, value) => {
        let doc: unknown = base();
        if (keyPath.length === 0) doc = value;
        else {
          let at = doc as Record<string | number, unknown>;
          for (const k of keyPath.slice(0, -1)) at = at[k] as Record<string | number, unknown>;
          at[keyPath[keyPath.length - 1]] = value;
        }
        // A whole replaced file is named by the key that is wrong inside it.
        const inside = keyPath.length === 0 && value && typeof value === 'object' ? Object.keys(value) : [];
        const prefixes = ['(root)', ...inside, ...keyPath.map((_, i) => keyName(keyPath.slice(0, i + 1)))];
        acceptsOrNames(
          () => parseConfig(doc, 'test', '/etc/vmrestore'),
          FailureType.Configuration,
          (m) => prefixes.some((p) => m.startsWith(`config ${p}`)),
        );
      }),
      { numRuns: 500 },
    );
  });
});

describe('restore points whose VM config disagrees with their disks are refused when read', () => {
  let repo: string;
  before(() => {
    repo = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-rp-props-'));
    mkdirSync(path.join(repo, 'restore-points'), { recursive: true });
  });
  after(() => rmSync(repo, { recursive: true, force: true }));

  const blockSize = MiB;
  const base = (id: string) => ({
    formatVersion: 1,
    id,
    createdAt: '2026-01-01T00:00:00.000Z',
    parentId: null,
    blockSize,
    vm: {
      name: 'web01',
      guestOs: 'linux',
      firmware: 'bios',
      cpus: 2,
      memoryMiB: 2048,
      nics: [{ network: 'VM Network' }],
      disks: [
        { index: 0, label: 'root', capacityBytes: 4 * MiB, provisioning: 'thin' },
        { index: 1, label: 'data', capacityBytes: 2 * MiB, provisioning: 'thick' },
      ],
    },
    disks: [
      { index: 0, capacityBytes: 4 * MiB, blocks: [null, null, null, null] },
      { index: 1, capacityBytes: 2 * MiB, blocks: [null, null] },
    ],
  });
  let seq = 0;
  const write = (mutate: (rp: ReturnType<typeof base>) => void): string => {
    const id = `rp-20260101000000-${(seq++).toString(16).padStart(6, '0')}`;
    const rp = base(id);
    mutate(rp);
    writeFileSync(path.join(repo, 'restore-points', `${id}.json`), JSON.stringify(rp));
    return id;
  };
  const corrupt = async (id: string, pattern: RegExp) => {
    await assert.rejects(getRestorePoint(repo, id), (err: unknown) => {
      assert.ok(err instanceof RestoreError, String(err));
      assert.equal(err.type, FailureType.RepositoryCorrupt);
      assert.match(err.message, pattern);
      return true;
    });
  };

  it('reads a consistent restore point', async () => {
    const rp = await getRestorePoint(
      repo,
      write(() => {}),
    );
    assert.equal(rp.vm.disks.length, 2);
  });
  it('refuses a disk count, index or capacity that disagrees', async () => {
    await corrupt(
      write((rp) => rp.vm.disks.pop()),
      /vm\.disks lists 1 disks but the restore point holds block maps for 2/,
    );
    await corrupt(
      write((rp) => rp.disks.pop()),
      /vm\.disks lists 2 disks but the restore point holds block maps for 1/,
    );
    await corrupt(
      write((rp) => (rp.vm.disks[1].index = 5)),
      /vm\.disks\[1\]\.index 5 should be 1/,
    );
    await corrupt(
      write((rp) => (rp.disks[1].index = 0)),
      /disk 0 has 2 block maps \(expected exactly one\)/,
    );
    await corrupt(
      write((rp) => (rp.vm.disks[0].capacityBytes = 8 * MiB)),
      /vm\.disks\[0\]\.capacityBytes 8388608 differs from its block map's 4194304/,
    );
  });
  it('any value in the VM config is accepted or refused as damage, naming the key', async () => {
    const keys = ['name', 'guestOs', 'firmware', 'cpus', 'memoryMiB', 'nics', 'disks'] as const;
    const diskKeys = ['index', 'label', 'capacityBytes', 'provisioning'] as const;
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.record({ key: fc.constantFrom(...keys), disk: fc.constant(undefined) }),
          fc.record({ key: fc.constantFrom(...diskKeys), disk: fc.constantFrom(0, 1) }),
        ),
        hostileJson,
        async ({ key, disk }, value) => {
          const id = write((rp) => {
            if (disk === undefined) (rp.vm as Record<string, unknown>)[key] = value;
            else (rp.vm.disks[disk] as Record<string, unknown>)[key] = value;
          });
          try {
            await getRestorePoint(repo, id);
          } catch (err) {
            assert.ok(err instanceof RestoreError, `expected a RestoreError, got ${(err as Error)?.stack ?? String(err)}`);
            assert.equal(err.type, FailureType.RepositoryCorrupt, err.message);
            assert.match(err.message, new RegExp(`is damaged: .*(vm\\.${key}|vm is missing|vm\\.disks|disk ${disk ?? ''})`), err.message);
          } finally {
            rmSync(path.join(repo, 'restore-points', `${id}.json`));
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
