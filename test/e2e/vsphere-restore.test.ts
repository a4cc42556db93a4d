import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError } from '@temporalio/client';
import { getRestorePoint } from '../../src/repository';
import { startVSphereRestore, failureMessage } from '../../src/client/restore';
import type { TransportRequest, VSphereRestoreResult } from '../../src/domain/vsphere';
import type { VSphereClient } from '../../src/vsphere';
import { type TestEnv, type WorkerProcess } from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { closeVSphereLab, localFlatFile, openVSphereLab } from '../helpers/vsphere';
import { readLabState } from '../../src/lab';
import { SAN_DATASTORE } from '../../src/lab/storage';

let env: TestEnv;
let worker: WorkerProcess;
let vs: VSphereClient;
const expectedHash = new Map<string, string>();

async function expected(rpId: string, disk: number): Promise<string> {
  const key = `${rpId}/${disk}`;
  if (!expectedHash.has(key)) expectedHash.set(key, await backedUpDiskDigest(env.config.repository.path, rpId, disk));
  return expectedHash.get(key)!;
}

async function restore(rpId: string, vmName: string, transport: TransportRequest, datastore?: string): Promise<VSphereRestoreResult> {
  const handle = await startVSphereRestore(
    env.client,
    { restorePointId: rpId, vmName, transport, datastore },
    { taskQueue: env.taskQueue },
  );
  return handle.result();
}

/** The path each mode must have written through: its own, never another mode's (src/lab/storage.ts). */
function assertWrittenVia(transport: string, via: string | undefined, disk: number): void {
  const storage = readLabState().vsphere?.storage;
  const proxyDevices = storage?.proxyDevices ?? '';
  const expected: Record<string, (v: string) => boolean> = {
    'direct-san': (v) => v === storage?.san?.device,
    'direct-nas': (v) => !!storage?.nasMounts.LocalDS_0 && v.startsWith(storage.nasMounts.LocalDS_0 + path.sep),
    // The hot-added disk's device: a loop device (root) or, without loop devices, the link's target file.
    hotadd: (v) => (storage?.loopDevices ? /^\/dev\/loop\d+$/.test(v) : !!proxyDevices),
    nbd: (v) => /^https:\/\/127\.0\.0\.1:\d+\/folder\//.test(v),
  };
  assert.ok(via && expected[transport]?.(via), `disk ${disk} written via ${via}, which is not ${transport}'s path`);
}

async function checkRestoredVm(rpId: string, result: VSphereRestoreResult, transport: string): Promise<void> {
  const rp = await getRestorePoint(env.config.repository.path, rpId);
  const dc = await vs.datacenter('DC0');
  const vm = await vs.findVmByName(dc, result.vmName);
  assert.ok(vm, `VM ${result.vmName} exists`);
  const cfg = await vm.config();
  assert.equal(cfg.cpus, rp.vm.cpus, 'cpus');
  assert.equal(cfg.memoryMiB, rp.vm.memoryMiB, 'memory');
  assert.deepEqual(
    cfg.nics.map((n) => n.network),
    rp.vm.nics.map((n) => n.network),
    'nic networks',
  );
  assert.equal(cfg.disks.length, rp.vm.disks.length, 'disk count');
  for (const d of rp.vm.disks) {
    const restored = cfg.disks[d.index];
    assert.equal(restored.capacityBytes, d.capacityBytes, `disk ${d.index} capacity`);
    assert.equal(restored.thinProvisioned, d.provisioning === 'thin', `disk ${d.index} provisioning`);
    const r = result.disks[d.index];
    assert.equal(r.transport, transport, `disk ${d.index} transport`);
    assertWrittenVia(transport, r.writtenVia, d.index);
    const file = localFlatFile(restored.fileName);
    assert.equal(await diskDigest(file), await expected(rpId, d.index), `disk ${d.index} bytes (${file}) equal the backup`);
  }
  assert.deepEqual(await vm.snapshots(), [], 'no restore snapshot remains');
  await vm.destroy();
}

describe('restore to vSphere (real Temporal + vcsim + repository)', () => {
  before(async () => {
    ({ env, worker, vs } = await openVSphereLab('vsphere'));
  });
  after(async () => {
    await closeVSphereLab({ env, worker, vs });
  });

  // Direct SAN writes the LUN-backed datastore; the others the default (NFS) one.
  for (const transport of ['direct-san', 'direct-nas', 'hotadd', 'nbd'] as const) {
    it(`restores the two-thick-disk VM byte for byte through ${transport}`, async () => {
      const rpId = env.demo['demo-thick'];
      const datastore = transport === 'direct-san' ? SAN_DATASTORE : undefined;
      const result = await restore(rpId, `t-thick-${transport}-${Date.now().toString(36)}`, transport, datastore);
      await checkRestoredVm(rpId, result, transport);
    });
  }

  it('refuses direct-san on the NFS datastore (no LUN behind it) and creates nothing', async () => {
    const vmName = `t-thick-san-nfs-${Date.now().toString(36)}`;
    const err = await restore(env.demo['demo-thick'], vmName, 'direct-san', 'LocalDS_0').then(
      () => assert.fail('restore should fail'),
      (e: unknown) => e,
    );
    assert.match(failureMessage(err), /no SAN access to datastore 'LocalDS_0'/);
    const dc = await vs.datacenter('DC0');
    assert.equal(await vs.findVmByName(dc, vmName), null, 'no VM was created');
  });

  for (const transport of ['hotadd', 'nbd'] as const) {
    it(`restores the thin 8 GiB Linux VM byte for byte through ${transport}`, async () => {
      const rpId = env.demo['demo-linux'];
      const result = await restore(rpId, `t-linux-${transport}-${Date.now().toString(36)}`, transport);
      await checkRestoredVm(rpId, result, transport);
    });
  }

  it('chooses HotAdd for a thin VM with auto, records it, and leaves no disk attached to the proxy', async () => {
    const rpId = env.demo['demo-linux'];
    const dc = await vs.datacenter('DC0');
    const proxy = await vs.findVmByName(dc, 'vmrestore-proxy');
    assert.ok(proxy);
    const proxyOwnDisks = await proxy.attachedDiskFiles();
    const result = await restore(rpId, `t-linux-auto-${Date.now().toString(36)}`, 'auto');
    assert.deepEqual(
      result.disks.map((d) => d.transport),
      ['hotadd'],
    );
    assert.deepEqual(await proxy.attachedDiskFiles(), proxyOwnDisks, 'proxy has no hot-added disks left');
    await checkRestoredVm(rpId, result, 'hotadd');
  });

  it('refuses direct-nas for a thin VM with a clear non-retryable error and creates nothing', async () => {
    const vmName = `t-linux-nas-${Date.now().toString(36)}`;
    const handle = await startVSphereRestore(
      env.client,
      { restorePointId: env.demo['demo-linux'], vmName, transport: 'direct-nas' },
      { taskQueue: env.taskQueue },
    );
    const err = await handle.result().then(
      () => assert.fail('restore should fail'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError);
    const msg = failureMessage(err);
    assert.match(msg, /direct-nas/);
    assert.match(msg, /thin/);
    const history = await handle.fetchHistory();
    const attempts =
      history.events?.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt) ?? [];
    assert.ok(
      attempts.every((a) => a === 1),
      `no retries (attempts ${attempts})`,
    );
    const dc = await vs.datacenter('DC0');
    assert.equal(await vs.findVmByName(dc, vmName), null, 'no VM was created');
    assert.ok(!existsSync(localFlatFile(`[LocalDS_0] ${vmName}/${vmName}.vmdk`)), 'no disk was created');
  });
});
