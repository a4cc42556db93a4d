import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import * as tls from 'node:tls';
import { ApplicationFailure } from '@temporalio/common';
import { toFailure } from '../../src/activities/failures';
import { FailureType, RestoreError } from '../../src/domain/errors';
import { VSphereNotFoundError } from '../../src/vsphere';
import {
  VSphereClient,
  VSphereFaultError,
  datastoreFileUrl,
  datastorePathToUrl,
  downloadDatastoreFile,
  flatFileName,
  formatDatastorePath,
  parseDatastorePath,
  serverThumbprint,
  uploadDatastoreFile,
  type Datacenter,
  type Vm,
} from '../../src/vsphere';
import { startVcsim, type Vcsim } from '../helpers/vcsim';

// vcsim's SSO simulator keys users as <-username>@vsphere.local, so '-username restore' accepts
// 'restore' and 'restore@vsphere.local' while '-username restore@vsphere.local' accepts neither.
const SIM_USER = 'restore';
const USER = 'restore@vsphere.local';
const PASSWORD = 'S3cret&<pass>';
const MiB = 1024 * 1024;

async function rejectsWith(p: Promise<unknown>, check: (e: Error) => void): Promise<Error> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof Error, `expected an Error, got ${String(err)}`);
    check(err);
    return err;
  }
  assert.fail('expected the promise to reject');
}

function notFound(pattern: RegExp): (e: Error) => void {
  return (e) => {
    assert.ok(e instanceof VSphereNotFoundError, `expected VSphereNotFoundError, got ${e.name}: ${e.message}`);
    assert.match(e.message, pattern);
    // What a workflow sees once the activity layer has mapped it.
    const failure = toFailure(e);
    assert.ok(failure instanceof ApplicationFailure, `expected ApplicationFailure, got ${String(failure)}`);
    assert.equal(failure.type, FailureType.NotFound);
    assert.equal(failure.nonRetryable, true);
  };
}

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function peerFingerprints(url: string): Promise<{ sha1: string; sha256: string }> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const s = tls.connect({ host: u.hostname, port: Number(u.port), rejectUnauthorized: false }, () => {
      const cert = s.getPeerCertificate();
      s.end();
      resolve({ sha1: cert.fingerprint, sha256: cert.fingerprint256 });
    });
    s.once('error', reject);
  });
}

describe('datastore path helpers', () => {
  test('parse and format datastore paths', () => {
    assert.deepEqual(parseDatastorePath('[LocalDS_0] vm/vm.vmdk'), { datastore: 'LocalDS_0', path: 'vm/vm.vmdk' });
    assert.deepEqual(parseDatastorePath('[ds 1]'), { datastore: 'ds 1', path: '' });
    assert.equal(formatDatastorePath('LocalDS_0', 'vm/vm.vmdk'), '[LocalDS_0] vm/vm.vmdk');
    assert.throws(() => parseDatastorePath('vm/vm.vmdk'), /not a datastore path/);
  });

  test('flat file name of a descriptor keeps the input form', () => {
    assert.equal(flatFileName('vm/vm.vmdk'), 'vm/vm-flat.vmdk');
    assert.equal(flatFileName('[LocalDS_0] vm/vm_1.vmdk'), '[LocalDS_0] vm/vm_1-flat.vmdk');
    assert.equal(flatFileName('vm/vm-flat.vmdk'), 'vm/vm-flat.vmdk');
    assert.throws(() => flatFileName('vm/vm.vmx'), /not a .vmdk/);
  });

  test('datastore file URL encodes the path and names datacenter and datastore', () => {
    const url = datastoreFileUrl('https://vc.example.com/sdk', '/DC0', 'LocalDS_0', 'my vm/my vm-flat.vmdk');
    assert.equal(url.href, 'https://vc.example.com/folder/my%20vm/my%20vm-flat.vmdk?dcPath=DC0&dsName=LocalDS_0');
    assert.equal(
      datastorePathToUrl('https://vc.example.com', 'F/DC1', '[ds] a/b.vmdk').href,
      'https://vc.example.com/folder/a/b.vmdk?dcPath=F%2FDC1&dsName=ds',
    );
  });
});

describe('VSphereClient against vcsim', () => {
  let sim: Vcsim;
  let plain: Vcsim;
  let client: VSphereClient;
  let dc: Datacenter;
  let restored: Vm;
  let proxy: Vm;

  before(async () => {
    [sim, plain] = await Promise.all([startVcsim({ username: SIM_USER, password: PASSWORD }), startVcsim({ tls: false })]);
    client = await VSphereClient.connect({ url: sim.url, username: USER, password: PASSWORD, insecure: true });
    dc = await client.datacenter();
  });

  after(async () => {
    await client?.logout().catch(() => undefined);
    await Promise.all([sim?.stop(), plain?.stop()]);
  });

  describe('session', () => {
    test('login yields a session cookie and an active session', async () => {
      assert.equal(client.about.apiType, 'VirtualCenter');
      assert.match(client.sessionCookie, /^vmware_soap_session=.+/);
      assert.equal(await client.isSessionActive(), true);
    });

    test('a wrong password is an InvalidLogin fault', async () => {
      await rejectsWith(VSphereClient.connect({ url: sim.url, username: USER, password: 'wrong', insecure: true }), (e) => {
        assert.ok(e instanceof VSphereFaultError, `expected VSphereFaultError, got ${e.name}: ${e.message}`);
        assert.equal(e.fault, 'InvalidLogin');
        assert.equal(e.type, FailureType.VSphereFault);
        assert.equal(e.nonRetryable, true);
        assert.match(e.message, /Login failed: InvalidLogin/);
      });
    });

    test('credentials in the URL are used and logout ends the session', async () => {
      const u = new URL(sim.url);
      u.username = encodeURIComponent(USER);
      u.password = encodeURIComponent(PASSWORD);
      u.pathname = '/';
      const c = await VSphereClient.connect({ url: u.href, insecure: true });
      assert.equal(c.url.href, sim.url, 'credentials are stripped and /sdk added');
      await c.logout();
      assert.equal(await c.isSessionActive(), false);
    });
  });

  describe('TLS', () => {
    test('a self-signed certificate is refused without insecure or a thumbprint', async () => {
      await rejectsWith(VSphereClient.connect({ url: sim.url, username: USER, password: PASSWORD }), (e) => {
        assert.ok(e instanceof VSphereFaultError);
        assert.equal(e.fault, 'TransportError');
        assert.match(e.message, /self[- ]signed|certificate/i);
        assert.equal(e.nonRetryable, true);
      });
    });

    test('the pinned SHA-256 or SHA-1 thumbprint of the certificate is accepted', async () => {
      const fp = await peerFingerprints(sim.url);
      assert.equal(await serverThumbprint(sim.url), fp.sha256);
      for (const thumbprint of [fp.sha256, fp.sha1.replace(/:/g, '').toLowerCase()]) {
        const c = await VSphereClient.connect({ url: sim.url, username: USER, password: PASSWORD, thumbprint });
        assert.equal((await c.datacenter()).name, 'DC0');
        await c.logout();
      }
    });

    test('a wrong thumbprint is refused before anything is sent', async () => {
      const wrong = 'AA:'.repeat(31) + 'AA';
      await rejectsWith(VSphereClient.connect({ url: sim.url, username: USER, password: PASSWORD, thumbprint: wrong }), (e) => {
        assert.ok(e instanceof VSphereFaultError);
        assert.match(e.message, /thumbprint .* expected AA:AA/);
        assert.equal(e.nonRetryable, true);
      });
      await rejectsWith(VSphereClient.connect({ url: sim.url, username: USER, password: PASSWORD, thumbprint: 'abc' }), (e) => {
        assert.ok(e instanceof RestoreError);
        assert.equal(e.type, FailureType.InvalidRequest);
      });
    });
  });

  describe('inventory lookups', () => {
    test('datacenter: the only one by default, unknown names list the known ones', async () => {
      assert.equal(dc.name, 'DC0');
      assert.equal(dc.path, '/DC0');
      assert.equal((await client.datacenter('DC0')).ref.value, dc.ref.value);
      await rejectsWith(client.datacenter('DC9'), notFound(/datacenter 'DC9' not found .*\(known: DC0\)/));
    });

    test('datastore: details of LocalDS_0, unknown names list the known ones', async () => {
      const ds = await client.datastore(dc, 'LocalDS_0');
      assert.equal(ds.name, 'LocalDS_0');
      assert.equal(ds.url, sim.datastoreDir('LocalDS_0'), 'vcsim reports the local folder as the URL');
      assert.ok(ds.capacityBytes > 0 && ds.freeSpaceBytes > 0 && ds.freeSpaceBytes <= ds.capacityBytes);
      assert.equal(ds.accessible, true);
      assert.deepEqual(
        (await client.listDatastores('DC0')).map((d) => d.name),
        ['LocalDS_0'],
      );
      await rejectsWith(
        client.datastore(dc, 'LocalDS_9'),
        notFound(/^datastore 'LocalDS_9' not found in datacenter 'DC0' \(known: LocalDS_0\)$/),
      );
    });

    test('network: standard and distributed port groups', async () => {
      const std = await client.network(dc, 'VM Network');
      assert.equal(std.kind, 'Network');
      assert.equal(std.ref.type, 'Network');
      const pg = await client.network(dc, 'DC0_DVPG0');
      assert.equal(pg.kind, 'DistributedVirtualPortgroup');
      assert.ok(pg.kind === 'DistributedVirtualPortgroup' && pg.switchUuid && pg.portgroupKey);
      await rejectsWith(client.network(dc, 'Prod'), notFound(/network 'Prod' not found .*known: .*DC0_DVPG0.*VM Network/));
    });

    test('folder: default VM folder, relative and inventory paths, missing child named', async () => {
      const root = await client.folder(dc);
      assert.equal(root.path, '/DC0/vm');
      assert.equal((await client.folder(dc, '/DC0/vm')).ref.value, root.ref.value);
      await rejectsWith(
        client.folder(dc, 'restores'),
        notFound(/folder 'restores' not found in datacenter 'DC0': '\/DC0\/vm' has no child 'restores'/),
      );
      await rejectsWith(client.folder(dc, '/DC0/vms/x'), notFound(/'\/DC0' has no child 'vms' \(known: datastore, host, network, vm\)/));
    });

    test('resource pool: first cluster by default, by cluster name or path, and its host', async () => {
      const pool = await client.resourcePool(dc);
      assert.equal(pool.path, '/DC0/host/DC0_C0/Resources');
      assert.equal(pool.owner.type, 'ClusterComputeResource');
      assert.equal((await client.resourcePool(dc, 'DC0_C0')).ref.value, pool.ref.value);
      assert.equal((await client.resourcePool(dc, '/DC0/host/DC0_C0/Resources')).ref.value, pool.ref.value);
      await rejectsWith(client.resourcePool(dc, 'DC0_C7'), notFound(/no child 'DC0_C7' \(known: DC0_C0, DC0_H0\)/));
      const host = await client.hostForPool(pool);
      assert.match(host.name, /^DC0_C0_H\d$/);
    });

    test('findVmByName finds an inventory VM and answers null for a missing one', async () => {
      const vm = await client.findVmByName(dc, 'DC0_H0_VM0');
      assert.ok(vm);
      assert.match(vm.ref, /^vm-\d+$/);
      assert.equal(await client.findVmByName(dc, 'no-such-vm'), null);
    });
  });

  describe('virtual machines', () => {
    test('createVm builds disks, NICs and extraConfig that read back the same', async () => {
      restored = await client.createVm(dc, {
        name: 'restored-web01',
        datastore: 'LocalDS_0',
        guestId: 'otherLinux64Guest',
        cpus: 2,
        memoryMiB: 1024,
        firmware: 'efi',
        extraConfig: { 'vmrestore.restoreId': 'r-123' },
        nics: [{ network: 'VM Network' }, { network: await client.network(dc, 'DC0_DVPG0') }],
        disks: [
          { capacityBytes: 1 * 1024 * MiB, thinProvisioned: true },
          { capacityBytes: 2 * 1024 * MiB, thinProvisioned: false, eagerlyScrub: true },
        ],
      });
      const cfg = await restored.config();
      assert.equal(cfg.name, 'restored-web01');
      assert.equal(cfg.cpus, 2);
      assert.equal(cfg.memoryMiB, 1024);
      assert.equal(cfg.firmware, 'efi');
      assert.equal(cfg.extraConfig['vmrestore.restoreId'], 'r-123');
      assert.deepEqual(
        cfg.disks.map((d) => [d.capacityBytes, d.thinProvisioned, d.eagerlyScrub, d.fileName]),
        [
          [1024 * MiB, true, false, '[LocalDS_0] restored-web01/restored-web01.vmdk'],
          [2048 * MiB, false, true, '[LocalDS_0] restored-web01/restored-web01_1.vmdk'],
        ],
      );
      assert.equal(new Set(cfg.disks.map((d) => d.controllerKey)).size, 1, 'both disks on one controller');
      assert.deepEqual(
        cfg.disks.map((d) => d.unitNumber),
        [0, 1],
      );
      assert.deepEqual(
        cfg.nics.map((n) => [n.type, n.network]),
        [
          ['VirtualVmxnet3', 'VM Network'],
          ['VirtualVmxnet3', 'DC0_DVPG0'],
        ],
      );
      const dir = path.join(sim.datastoreDir('LocalDS_0'), 'restored-web01');
      assert.ok(existsSync(path.join(dir, 'restored-web01.vmdk')), 'descriptor created');
      // The lab's vcsim gives a new extent its capacity, as a datastore does; off the LUN it stays sparse.
      const extent = statSync(path.join(dir, 'restored-web01-flat.vmdk'));
      assert.equal(extent.size, cfg.disks[0].capacityBytes, 'the extent has the disk capacity');
      assert.ok(extent.blocks * 512 < MiB, `the extent is sparse (${extent.blocks} blocks)`);
    });

    test('findVmsByExtraConfig finds the VM by its restore id', async () => {
      const found = await client.findVmsByExtraConfig(dc, 'vmrestore.restoreId', 'r-123');
      assert.deepEqual(
        found.map((v) => v.ref),
        [restored.ref],
      );
      assert.deepEqual(await client.findVmsByExtraConfig(dc, 'vmrestore.restoreId', 'r-999'), []);
    });

    test('createSnapshot and removeSnapshot are idempotent', async () => {
      const first = await restored.createSnapshot('vmrestore-r-123', 'restore in progress');
      const second = await restored.createSnapshot('vmrestore-r-123', 'restore in progress');
      assert.equal(second.ref.value, first.ref.value);
      assert.deepEqual(
        (await restored.snapshots()).map((s) => s.name),
        ['vmrestore-r-123'],
      );
      assert.equal(await restored.removeSnapshot('vmrestore-r-123', { consolidate: true }), true);
      assert.equal(await restored.removeSnapshot('vmrestore-r-123', { consolidate: true }), false);
      assert.deepEqual(await restored.snapshots(), []);
    });

    test('powerOn and powerOff are idempotent', async () => {
      assert.equal(await restored.powerState(), 'poweredOff');
      const progress: number[] = [];
      await restored.powerOn({ onProgress: (p) => progress.push(p) });
      await restored.powerOn();
      assert.equal(await restored.powerState(), 'poweredOn');
      assert.deepEqual(progress, [100]);
      await restored.powerOff();
      await restored.powerOff();
      assert.equal(await restored.powerState(), 'poweredOff');
    });

    test('attachDisk hot-adds another VM disk once and detachDisk removes it once', async () => {
      proxy = await client.createVm(dc, {
        name: 'proxy01',
        datastore: 'LocalDS_0',
        guestId: 'otherLinux64Guest',
        cpus: 1,
        memoryMiB: 256,
        firmware: 'bios',
        disks: [{ capacityBytes: 256 * MiB, thinProvisioned: true }],
      });
      await proxy.powerOn();
      const file = (await restored.config()).disks[1].fileName;
      const key = await proxy.attachDisk(file, { capacityBytes: 2048 * MiB });
      assert.equal(await proxy.attachDisk(file, { capacityBytes: 2048 * MiB }), key, 'second attach finds the first');
      assert.deepEqual(await proxy.attachedDiskFiles(), ['[LocalDS_0] proxy01/proxy01.vmdk', file]);
      const attached = (await proxy.config()).disks.find((d) => d.key === key);
      assert.equal(attached?.unitNumber, 1, 'next free unit on the existing controller');
      assert.equal(await proxy.detachDisk(file), true);
      assert.equal(await proxy.detachDisk(file), false);
      assert.deepEqual(await proxy.attachedDiskFiles(), ['[LocalDS_0] proxy01/proxy01.vmdk']);
      assert.ok(existsSync(path.join(sim.datastoreDir('LocalDS_0'), 'restored-web01', 'restored-web01_1.vmdk')), 'detach keeps the file');
    });

    test('a failed task names the operation, the fault and the VM', async () => {
      await rejectsWith(proxy.attachDisk('[LocalDS_0] missing/missing.vmdk'), (e) => {
        assert.ok(e instanceof VSphereFaultError, `expected VSphereFaultError, got ${e.name}: ${e.message}`);
        assert.equal(e.fault, 'FileNotFound');
        assert.match(e.message, /^ReconfigVM_Task failed: FileNotFound.*vm 'proxy01'/);
      });
    });

    test('destroy powers off, deletes and is a no-op the second time', async () => {
      await proxy.destroy();
      assert.equal(await client.findVmByName(dc, 'proxy01'), null);
      await proxy.destroy();
      await rejectsWith(client.vm(proxy.ref).powerState(), notFound(new RegExp(`vm ${proxy.ref} not found`)));
    });
  });

  describe('datastore file transfer', () => {
    const size = 5 * MiB;
    const data = randomBytes(size);

    test('upload streams 5 MiB into the flat extent and a Range GET reads part of it back', async () => {
      const descriptor = (await restored.config()).disks[0].fileName;
      const { datastore, path: flat } = parseDatastorePath(flatFileName(descriptor));
      async function* chunks(): AsyncGenerator<Buffer> {
        for (let off = 0; off < size; off += 256 * 1024) yield data.subarray(off, off + 256 * 1024);
      }
      const up = await uploadDatastoreFile(client, { datacenter: dc, datastore, path: flat, size, body: chunks() });
      assert.equal(up.bytes, size);
      const local = path.join(sim.datastoreDir(datastore), flat);
      assert.equal(createHash('sha256').update(readFileSync(local)).digest('hex'), createHash('sha256').update(data).digest('hex'));

      const offset = MiB + 123;
      const got = await downloadDatastoreFile(client, {
        datacenter: 'DC0',
        datastore,
        path: flat,
        range: { offset, length: 100_000 },
      });
      assert.equal(got.statusCode, 206);
      assert.equal(got.totalSize, size);
      assert.ok((await readAll(got.body)).equals(data.subarray(offset, offset + 100_000)), 'range bytes match');
    });

    test('a body of the wrong length and an unknown datastore fail with the URL in the message', async () => {
      await rejectsWith(
        uploadDatastoreFile(client, { datacenter: 'DC0', datastore: 'LocalDS_0', path: 'x/short.bin', size: 10, body: [Buffer.alloc(4)] }),
        (e) => assert.match(e.message, /short\.bin.* yielded 4 bytes, announced 10/),
      );
      await rejectsWith(
        downloadDatastoreFile(client, { datacenter: 'DC0', datastore: 'LocalDS_9', path: 'a.bin' }),
        notFound(/GET https:\/\/127\.0\.0\.1:\d+\/folder\/a\.bin\?dcPath=DC0&dsName=LocalDS_9 failed: HTTP 404/),
      );
    });

    test('plain http works for SOAP and file transfer', async () => {
      const c = await VSphereClient.connect({ url: plain.url, username: 'any', password: 'any' });
      try {
        const body = Buffer.from('hello over http');
        await uploadDatastoreFile(c, {
          datacenter: 'DC0',
          datastore: 'LocalDS_0',
          path: 'notes/hello.txt',
          size: body.length,
          body: [body],
        });
        const got = await downloadDatastoreFile(c, { datacenter: 'DC0', datastore: 'LocalDS_0', path: 'notes/hello.txt' });
        assert.equal(got.statusCode, 200);
        assert.equal((await readAll(got.body)).toString(), 'hello over http');
      } finally {
        await c.logout();
      }
    });

    test('destroying the restored VM removes its folder', async () => {
      await restored.destroy();
      assert.equal(existsSync(path.join(sim.datastoreDir('LocalDS_0'), 'restored-web01')), false);
    });
  });
});
