import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { MockActivityEnvironment } from '@temporalio/testing';
import { withHeartbeat } from '../../src/activities/heartbeat';
import { createVSphereActivities } from '../../src/activities/vsphere';
import type { VSphereSessions } from '../../src/activities/vsphere/sessions';
import { parseConfig } from '../../src/config';
import type { DiskCheckpoint, VSpherePlan } from '../../src/domain/vsphere';
import { getRestorePoint, importRestorePoint } from '../../src/repository';
import { taskWaitContext } from '../../src/vsphere/task';
import { testDiskPlan, testVSpherePlan } from '../helpers/vsphere-plan';

/**
 * Activities in the SDK's MockActivityEnvironment (in-process, no server): the details they heartbeat,
 * how they resume from an earlier attempt's details, and how cancellation reaches them. Outcomes are
 * read from the target file, never from the activity's own result.
 */

const MiB = 1024 * 1024;

describe('withHeartbeat', () => {
  it('heartbeats while a control activity runs and hands the cancellation signal to vSphere task waits', async () => {
    let signal: AbortSignal | undefined;
    const acts = withHeartbeat(
      {
        waitForTask: async () => {
          signal = taskWaitContext.getStore()?.signal;
          await new Promise<void>((resolve) => signal!.addEventListener('abort', () => resolve()));
          return 'stopped';
        },
        writeDisk: async () => 'self-heartbeating',
      },
      { intervalMs: 20 },
    );
    const env = new MockActivityEnvironment();
    let beats = 0;
    env.on('heartbeat', () => beats++);
    const running = env.run(acts.waitForTask);
    while (beats < 3) await new Promise((r) => setTimeout(r, 10));
    env.cancel('CANCELLED');
    assert.equal(await running.catch((e: unknown) => e), 'stopped');
    assert.equal(signal?.aborted, true, 'the task wait saw the activity cancelled');

    const quiet = new MockActivityEnvironment();
    let quietBeats = 0;
    quiet.on('heartbeat', () => quietBeats++);
    assert.equal(await quiet.run(acts.writeDisk), 'self-heartbeating');
    assert.equal(quietBeats, 0, 'writeDisk heartbeats its own checkpoints; a bare heartbeat would overwrite them');
  });
});

describe('writeDisk (direct-nas) on a file datastore', () => {
  let dir: string;
  let image: Buffer;
  let datastore: string;
  let plan: VSpherePlan;
  let acts: ReturnType<typeof createVSphereActivities>;
  const diskFile = '[LocalDS_0] web01/web01.vmdk';
  const flat = () => path.join(datastore, 'web01', 'web01-flat.vmdk');

  before(async () => {
    dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-activity-'));
    const repo = path.join(dir, 'repo');
    datastore = path.join(dir, 'LocalDS_0');
    await fsp.mkdir(path.join(datastore, 'web01'), { recursive: true });
    image = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(2 * MiB), randomBytes(3 * MiB)]);
    await fsp.writeFile(path.join(dir, 'disk0.img'), image);
    // One thick disk; the VM's hardware does not matter to a disk write.
    const hardware = { guestOs: 'linux', firmware: 'bios', cpus: 1, memoryMiB: 512, nics: [] };
    const vm = { name: 'web01', ...hardware, disks: [{ path: 'disk0.img', provisioning: 'thick' }] };
    await fsp.writeFile(path.join(dir, 'vm.json'), JSON.stringify(vm));
    const { restorePointId } = await importRestorePoint(repo, path.join(dir, 'vm.json'));
    const rp = await getRestorePoint(repo, restorePointId);
    const config = parseConfig(
      {
        repository: { path: repo },
        proxies: [{ name: 'nas', transports: ['direct-nas'], nasMounts: { LocalDS_0: datastore } }],
        restore: { checkpointBytes: MiB },
      },
      'test',
      dir,
    );
    acts = createVSphereActivities({ config, sessions: {} as VSphereSessions });
    plan = testVSpherePlan({
      restoreId: 'r1',
      restorePointId,
      vm: rp.vm,
      vmName: 'web01',
      proxy: 'nas',
      disks: [testDiskPlan(0, image.length, ['direct-nas'])],
      requiredBytes: image.length,
    });
  });
  after(async () => {
    await fsp.rm(dir, { recursive: true, force: true });
  });

  const args = () => ({ plan, vmRef: 'vm-1', diskIndex: 0, diskFile, transport: 'direct-nas' as const });
  /** A freshly created flat extent: empty, as the datastore allocates it. */
  const freshExtent = async (content = Buffer.alloc(0)) => fsp.writeFile(flat(), content);

  it('writes the restore point to the flat extent, heartbeating each durable checkpoint', async () => {
    await freshExtent();
    const env = new MockActivityEnvironment();
    const beats: DiskCheckpoint[] = [];
    env.on('heartbeat', (d: DiskCheckpoint) => beats.push(d));
    await env.run(acts.writeDisk, args());
    assert.ok((await fsp.readFile(flat())).equals(image), 'the extent holds the disk, byte for byte');
    assert.ok(beats.length >= 6, `a heartbeat per MiB written (got ${beats.length})`);
    const offsets = beats.map((b) => b.offset);
    assert.deepEqual(
      offsets,
      [...offsets].sort((a, b) => a - b),
      'checkpoints only move forward',
    );
    assert.equal(offsets.at(-1), image.length);
    assert.ok(beats.every((b) => b.transport === 'direct-nas' && b.diskIndex === 0));
  });

  it("resumes from an earlier attempt's heartbeat: bytes below its checkpoint are not written again", async () => {
    // What the first attempt left: a marker below the checkpoint (a rewrite would replace it), nothing after.
    const checkpoint = 4 * MiB;
    await freshExtent(Buffer.alloc(checkpoint, 0xab));
    const env = new MockActivityEnvironment({
      heartbeatDetails: { diskIndex: 0, offset: checkpoint, bytes: checkpoint, transport: 'direct-nas' } satisfies DiskCheckpoint,
    });
    await env.run(acts.writeDisk, args());
    const extent = await fsp.readFile(flat());
    assert.equal(extent.length, image.length);
    assert.ok(
      extent.subarray(0, checkpoint).every((b) => b === 0xab),
      'below the checkpoint: untouched',
    );
    assert.ok(extent.subarray(checkpoint).equals(image.subarray(checkpoint)), 'from the checkpoint on: the disk');
  });

  it('starts over when the earlier attempt used another transport', async () => {
    // A marker where the disk has data (a rewrite replaces it); its zero ranges stay holes either way.
    await freshExtent(Buffer.alloc(3 * MiB, 0xab));
    const env = new MockActivityEnvironment({
      heartbeatDetails: { diskIndex: 0, offset: 4 * MiB, bytes: 4 * MiB, transport: 'nbd' } satisfies DiskCheckpoint,
    });
    await env.run(acts.writeDisk, args());
    assert.ok((await fsp.readFile(flat())).equals(image));
  });

  it('stops when cancelled; every byte below its last heartbeat is on the target', async () => {
    await freshExtent();
    const env = new MockActivityEnvironment();
    const beats: DiskCheckpoint[] = [];
    env.on('heartbeat', (d: DiskCheckpoint) => {
      beats.push(d);
      if (beats.length === 2) env.cancel('CANCELLED');
    });
    // 2 MB/s: the cancel lands long before the 8 MiB are written.
    const slow = { ...args(), plan: { ...plan, throttleMBps: 2 } };
    await assert.rejects(env.run(acts.writeDisk, slow));
    const last = beats.at(-1)!.offset;
    assert.ok(last > 0 && last < image.length, `stopped part-way (last checkpoint ${last})`);
    const extent = await fsp.readFile(flat());
    assert.ok(extent.subarray(0, last).equals(image.subarray(0, last)), 'the checkpointed part is the disk');
  });
});
