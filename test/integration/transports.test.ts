import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync, mkdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { resolvePassword, type ProxyConfig } from '../../src/config';
import { FailureType, RestoreError } from '../../src/domain/errors';
import type { DiskPlan, TransportMode } from '../../src/domain/vsphere';
import { labConfig, readLabState } from '../../src/lab';
import { ensureTool, GOVC } from '../../src/lab/binaries';
import { getRestorePoint, localRepository, type RestorePoint } from '../../src/repository';
import { seedDemoRepository } from '../../src/lab/demo';
import { TRANSPORTS, type DiskWriteJob } from '../../src/transport';
import { deviceNamesForDiskUuid } from '../../src/transport/hotadd';
import { SanHost } from '../../src/transport/san-host';
import type { VSphereSession } from '../../src/vsphere/session';
import { flatFileName, parseDatastorePath, type VSphereClient, type Vm } from '../../src/vsphere';
import type { CreateVmSpec } from '../../src/vsphere/finder';
import { labUp } from '../../src/lab';
import {} from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { labVSphere, localFlatFile } from '../helpers/vsphere';

const run = promisify(execFile);
const config = () => labConfig(readLabState());
let vs: VSphereClient;
let rp: RestorePoint;
let rpId: string;
let expected: string;
const created: Vm[] = [];
const tag = randomBytes(3).toString('hex');
// demo-thick's 256 MiB data disk: small enough to write four ways in a test.
const DISK = 1;

async function govc(args: string[]): Promise<string> {
  const p = config().vsphere.profiles.lab;
  const { stdout } = await run(ensureTool(GOVC), args, {
    env: { ...process.env, GOVC_URL: p.url, GOVC_USERNAME: p.username, GOVC_PASSWORD: resolvePassword('lab', p), GOVC_INSECURE: '1' },
  });
  return stdout;
}

/** A small VM on `datastore` with `disks` (empty, created by vSphere), destroyed after the tests. */
async function makeVm(
  name: string,
  datastore: string,
  disks: CreateVmSpec['disks'],
  extraConfig: Record<string, string> = {},
): Promise<Vm> {
  const dc = await vs.datacenter('DC0');
  const vm = await vs.createVm(dc, {
    ...{ name, guestId: 'otherLinux64Guest', cpus: 1, memoryMiB: 128, firmware: 'bios', extraConfig, nics: [], disks },
    folder: await vs.folder(dc),
    pool: await vs.resourcePool(dc),
    datastore: await vs.datastore(dc, datastore),
  });
  created.push(vm);
  return vm;
}

/** A VM with one empty disk shaped like the backed-up one, on `datastore`: the restore target. */
async function targetVm(name: string, datastore: string, thin: boolean): Promise<{ vm: Vm; diskFile: string }> {
  const vm = await makeVm(name, datastore, [
    { capacityBytes: rp.vm.disks[DISK].capacityBytes, thinProvisioned: thin, eagerlyScrub: false },
  ]);
  return { vm, diskFile: (await vm.config()).disks[0].fileName };
}

async function proxyVm(name: string): Promise<Vm> {
  const dc = await vs.datacenter('DC0');
  const vm = await vs.findVmByName(dc, name);
  assert.ok(vm, `proxy VM ${name}`);
  return vm;
}

function job(mode: TransportMode, diskFile: string, proxy: Partial<ProxyConfig> = {}, extra: Partial<DiskWriteJob> = {}): DiskWriteJob {
  const cfg = config();
  const labProxy = cfg.proxies[0];
  const disk: DiskPlan = {
    diskIndex: DISK,
    label: rp.vm.disks[DISK].label,
    capacityBytes: rp.vm.disks[DISK].capacityBytes,
    nonZeroBytes: 0,
    thin: false,
    eagerlyScrub: false,
    transports: [mode],
  };
  const proxyVmName = proxy.vmName ?? labProxy.vmName!;
  return {
    datacenter: 'DC0',
    disk,
    diskFile,
    flatPath: flatFileName(diskFile),
    proxy: { ...labProxy, ...proxy },
    proxyVmName,
    repository: localRepository(cfg.repository.path),
    restorePoint: rp,
    readConcurrency: 4,
    checkpointBytes: 16 * 1024 * 1024,
    throttleBytesPerSecond: 0,
    signal: new AbortController().signal,
    session: async () => vs,
    proxyVm: () => proxyVm(proxyVmName),
    heartbeat: () => {},
    rate: () => 0,
    counted: () => {},
    ...extra,
  };
}

async function unavailable(p: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof RestoreError, String(err));
    assert.equal(err.type, FailureType.TransportUnavailable, err.message);
    assert.match(err.message, pattern);
    return true;
  });
}

async function waitFor(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The by-id links of a disk inside a proxy VM, as the lab shows them. */
function byIdDir(proxyVmName: string): string {
  return path.join(readLabState().vsphere!.storage!.proxyDevices, proxyVmName, 'by-id');
}

async function diskUuid(vmName: string, diskFile: string): Promise<string> {
  // govc, an independent client, reads the attached disk's backing UUID.
  const info = JSON.parse(await govc(['device.info', '-vm', vmName, '-json', 'disk-*'])) as {
    devices: { backing: { fileName: string; uuid: string } }[];
  };
  const d = info.devices.find((x) => x.backing.fileName === diskFile);
  assert.ok(d, `${diskFile} is attached to ${vmName} (govc)`);
  return d.backing.uuid;
}

const storage = () => readLabState().vsphere?.storage;

describe('each transport writes through its own path in the lab (real vcsim, LUN, bind mount, loop devices)', () => {
  before(async () => {
    await labUp();
    vs = await labVSphere(config());
    const demo = await seedDemoRepository(config().repository.path);
    rpId = demo['demo-thick'];
    rp = await getRestorePoint(config().repository.path, rpId);
    expected = await backedUpDiskDigest(config().repository.path, rpId, DISK);
  });
  after(async () => {
    const proxy = await proxyVm(config().proxies[0].vmName!).catch(() => undefined);
    for (const vm of created) {
      const file = (await vm.config().catch(() => undefined))?.disks[0]?.fileName;
      if (file && proxy) await proxy.detachDisk(file).catch(() => {});
    }
    for (const vm of created.reverse()) await vm.destroy().catch(() => {});
    await vs?.logout().catch(() => {});
  });

  it('hotadd: the attached disk appears in its proxy VM only, by UUID, as a loop device; written there; gone on detach', async () => {
    const proxyName = config().proxies[0].vmName!;
    // A second proxy VM: what is attached to the first must not show in it.
    const other = await makeVm(`t-proxy02-${tag}`, 'LocalDS_0', [{ capacityBytes: 16 << 20, thinProvisioned: true, eagerlyScrub: false }], {
      'vmrestore.role': 'proxy',
    });
    const { diskFile } = await targetVm(`t-hot-${tag}`, 'LocalDS_0', true);
    const proxy = await proxyVm(proxyName);
    await unavailable(TRANSPORTS.hotadd.write(job('hotadd', diskFile)), /is not attached to proxy VM/);

    await proxy.attachDisk(diskFile, { capacityBytes: rp.vm.disks[DISK].capacityBytes });
    const uuid = await diskUuid(proxyName, diskFile);
    assert.match(uuid, /^6000C29/i, 'a vSphere-style disk UUID');
    const [wwn, scsi] = deviceNamesForDiskUuid(uuid);
    assert.match(scsi, /^scsi-36000c29[0-9a-f]{25}$/);
    const link = path.join(byIdDir(proxyName), wwn);
    await waitFor(`${link}`, () => existsSync(link));
    assert.equal(readlinkSync(path.join(byIdDir(proxyName), scsi)), readlinkSync(link));
    assert.ok(!existsSync(path.join(byIdDir(other.name!), wwn)), 'not visible in the other proxy VM');

    // The other proxy's device folder never shows the disk: the write waits, then names the UUID.
    const t0 = Date.now();
    let beats = 0;
    await unavailable(
      TRANSPORTS.hotadd.write(
        job(
          'hotadd',
          diskFile,
          { hotaddDevices: { LocalDS_0: byIdDir(other.name!) } },
          { deviceWaitMs: 2500, heartbeat: () => void beats++ },
        ),
      ),
      new RegExp(`no device for disk UUID ${uuid}`),
    );
    assert.ok(Date.now() - t0 >= 2500, 'waited for the device');
    assert.ok(beats >= 2, `heartbeats while waiting (${beats})`);

    const out = await TRANSPORTS.hotadd.write(job('hotadd', diskFile));
    const device = readlinkSync(link);
    assert.match(device, /^\/dev\/loop\d+$/, 'a loop device (root lab)');
    assert.equal(out.writtenVia, device, 'written through the hot-added device');
    const flat = localFlatFile(diskFile);
    const { stdout } = await run('losetup', ['--list', '--noheadings', '--output', 'BACK-FILE', device]);
    assert.equal(path.resolve(stdout.trim()), path.resolve(flat), 'the device is the disk');
    assert.equal(await diskDigest(flat), expected, 'bytes equal the backup');

    await proxy.detachDisk(diskFile);
    await waitFor('links removed on detach', () => !existsSync(link) && !existsSync(path.join(byIdDir(proxyName), scsi)));
    const loops = await run('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE']);
    assert.ok(!loops.stdout.includes(path.resolve(flat)), 'loop device detached');
    await unavailable(TRANSPORTS.hotadd.write(job('hotadd', diskFile)), /is not attached/);

    // A destroyed proxy VM takes its device folder (here with its own disk) with it.
    const ownDisk = (await other.config()).disks[0];
    await waitFor("the other proxy's own disk", () => existsSync(path.join(byIdDir(other.name!), deviceNamesForDiskUuid(ownDisk.uuid)[0])));
    await other.destroy();
    await waitFor('the destroyed proxy VM device folder removed', () => !existsSync(path.dirname(byIdDir(other.name!))));
  });

  it("direct-san: written to the LUN at the block map's offsets; reads back through the datastore; no LUN, no write", async (t) => {
    const san = storage()?.san;
    if (!san) return t.skip('the lab has no LUN here (not root or no loop devices)');
    const { diskFile } = await targetVm(`t-san-${tag}`, san.datastore, false);
    const flat = localFlatFile(diskFile);
    // Read through the datastore first, so the host's page cache holds the old (zero) pages.
    assert.notEqual(await diskDigest(flat), expected);
    const out = await TRANSPORTS['direct-san'].write(job('direct-san', diskFile));
    assert.equal(out.writtenVia, san.device, 'written to the LUN');
    assert.ok(out.bytesSkippedZero > 0 && out.bytesWritten > 0);
    assert.equal(await diskDigest(flat), expected, 'bytes equal the backup, read through the datastore');
    // And through vCenter's datastore file API, with govc: the host serves the new bytes.
    const copy = path.join(os.tmpdir(), `vmrestore-san-${tag}.img`);
    try {
      await govc(['datastore.download', '-ds', san.datastore, parseDatastorePath(flatFileName(diskFile)).path, copy]);
      assert.equal(await diskDigest(copy), expected, 'govc datastore.download reads the bytes written to the LUN');
    } finally {
      rmSync(copy, { force: true });
    }
    // filefrag (e2fsprogs) reads the same extents: the flat file has no unwritten extent over written data.
    const { stdout } = await run('filefrag', ['-e', flat]);
    assert.match(stdout, /extents? found/);

    // Another mode's path does not help: the datastore folder exists, the LUN does not.
    const fake = path.join(readLabState().vsphere!.datastorePaths[san.datastore], '..', `not-a-lun-${tag}`);
    writeFileSync(fake, '');
    await unavailable(
      TRANSPORTS['direct-san'].write(job('direct-san', diskFile, { sanLuns: { [san.datastore]: fake } })),
      /is not a block device/,
    );
    await unavailable(
      TRANSPORTS['direct-san'].write(job('direct-san', diskFile, { sanLuns: { [san.datastore]: '/dev/no-such-lun' } })),
      /does not see LUN \/dev\/no-such-lun/,
    );
    await unavailable(TRANSPORTS['direct-san'].write(job('direct-san', diskFile, { sanLuns: {} })), /has no LUN for datastore/);

    // The lab's vCenter offers the SAN host requests; a server without them (as a real vCenter) does not.
    assert.equal(await SanHost.unavailable(vs), undefined);
    const plain = http.createServer((_req, res) => {
      res.statusCode = 404;
      res.end('Not Found');
    });
    await new Promise<void>((r) => plain.listen(0, '127.0.0.1', r));
    try {
      const url = new URL(`http://127.0.0.1:${(plain.address() as AddressInfo).port}/sdk`);
      assert.match(
        (await SanHost.unavailable({ url, agent: new http.Agent(), sessionCookie: '' } as unknown as VSphereSession)) ?? '(offered)',
        /offers no block map of a disk's LUN blocks \(HTTP 404/,
      );
    } finally {
      plain.close();
    }
    // The host answers block-map, zero and release requests only within a live vCenter session.
    const rel = parseDatastorePath(flatFileName(diskFile)).path;
    const withCookie = (sessionCookie: string) =>
      new SanHost({ url: vs.url, agent: vs.agent, sessionCookie } as unknown as VSphereSession, san.datastore, rel);
    assert.ok((await withCookie(vs.sessionCookie).blockMap()).extents.length > 0, 'the session of the restore gets the map');
    for (const cookie of ['', 'vmware_soap_session="00000000-0000-0000-0000-000000000000"']) {
      for (const call of [(h: SanHost) => h.blockMap(), (h: SanHost) => h.zero(0, 4096), (h: SanHost) => h.release()]) {
        await unavailable(call(withCookie(cookie)), /HTTP 401: not authenticated/);
      }
    }
  });

  it('direct-san: a thin disk has no blocks on the LUN, and a datastore without a LUN has none either', async (t) => {
    const san = storage()?.san;
    if (!san) return t.skip('the lab has no LUN here');
    const thin = await targetVm(`t-san-thin-${tag}`, san.datastore, true);
    await unavailable(TRANSPORTS['direct-san'].write(job('direct-san', thin.diskFile)), /not allocated on the LUN.*thick disks only/);
    const nas = await targetVm(`t-san-nas-${tag}`, 'LocalDS_0', false);
    await unavailable(TRANSPORTS['direct-san'].write(job('direct-san', nas.diskFile)), /has no LUN for datastore 'LocalDS_0'/);
  });

  it('direct-nas: written through the NFS mount only; an unmounted mount point fails', async (t) => {
    const nasMount = storage()?.nasMounts.LocalDS_0;
    if (!nasMount) return t.skip('the lab has no NFS mount stand-in here');
    const { diskFile } = await targetVm(`t-nas-${tag}`, 'LocalDS_0', false);
    const out = await TRANSPORTS['direct-nas'].write(job('direct-nas', diskFile));
    assert.ok(out.writtenVia.startsWith(nasMount + path.sep), `${out.writtenVia} is on the NFS mount ${nasMount}`);
    assert.equal(await diskDigest(localFlatFile(diskFile)), expected);
    // The NFS mount gone (an empty mount point): refused, though the datastore is still there for the other modes.
    const notMounted = path.join(path.dirname(nasMount), `unmounted-${tag}`);
    mkdirSync(notMounted, { recursive: true });
    await unavailable(
      TRANSPORTS['direct-nas'].write(job('direct-nas', diskFile, { nasMounts: { LocalDS_0: notMounted } })),
      /flat extent .* is not visible to proxy 'lab-proxy'/,
    );
    await unavailable(TRANSPORTS['direct-nas'].write(job('direct-nas', diskFile, { nasMounts: {} })), /cannot reach datastore 'LocalDS_0'/);
  });
});
