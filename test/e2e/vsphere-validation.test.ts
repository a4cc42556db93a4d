import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startVSphereRestore, failureMessage } from '../../src/client/restore';
import type { VSphereRestoreRequest } from '../../src/domain/vsphere';
import type { VSphereClient } from '../../src/vsphere';
import { type TestEnv, type WorkerProcess } from '../helpers/env';
import { closeVSphereLab, openVSphereLab } from '../helpers/vsphere';

let env: TestEnv;
let worker: WorkerProcess;
let vs: VSphereClient;

/** Runs a restore that must fail in initialization: clear message, no retries, nothing created. */
async function expectRejected(req: Partial<VSphereRestoreRequest>, pattern: RegExp): Promise<string> {
  const vmName = req.vmName ?? `t-bad-${Date.now().toString(36)}`;
  const handle = await startVSphereRestore(
    env.client,
    { restorePointId: env.demo['demo-thick'], transport: 'nbd', ...req, vmName } as VSphereRestoreRequest,
    {
      taskQueue: env.taskQueue,
      workflowId: `restore-vsphere-invalid-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`,
    },
  );
  const err = await handle.result().then(
    () => assert.fail(`restore ${JSON.stringify(req)} should have failed`),
    (e: unknown) => e,
  );
  const msg = failureMessage(err);
  assert.match(msg, pattern);
  const history = await handle.fetchHistory();
  const scheduled = history
    .events!.filter((e) => e.activityTaskScheduledEventAttributes)
    .map((e) => e.activityTaskScheduledEventAttributes!.activityType!.name);
  assert.deepEqual(scheduled, ['prepareVSphereRestore'], 'only initialization ran');
  const attempts = history
    .events!.filter((e) => e.activityTaskStartedEventAttributes)
    .map((e) => e.activityTaskStartedEventAttributes!.attempt);
  assert.deepEqual(attempts, [1], 'a bad request is not retried');
  if (typeof req.vmName === 'string' && req.vmName.length > 0 && !/[\\/]/.test(req.vmName) && req.vmName !== 'DC0_H0_VM0') {
    const dc = await vs.datacenter('DC0');
    assert.equal(await vs.findVmByName(dc, req.vmName), null, 'nothing was created');
  }
  return msg;
}

describe('bad restore requests fail before anything is created', () => {
  before(async () => {
    ({ env, worker, vs } = await openVSphereLab('validation'));
  });
  after(async () => {
    await closeVSphereLab({ env, worker, vs });
  });

  it('unknown restore point', async () => {
    await expectRejected({ restorePointId: 'rp-20990101000000-abcdef' }, /restore point .*rp-20990101000000-abcdef.* not found/i);
  });
  it('unknown datastore names the known ones', async () => {
    await expectRejected({ datastore: 'LocalDS_9' }, /datastore 'LocalDS_9' not found.*LocalDS_0/);
  });
  it('unknown target network', async () => {
    await expectRejected({ networkMap: { 'VM Network': 'NoSuchNet' } }, /network 'NoSuchNet' not found/);
  });
  it('unknown folder', async () => {
    await expectRejected({ folder: 'no-such-folder' }, /folder .*no-such-folder.* not found/i);
  });
  it('a VM name that already exists', async () => {
    await expectRejected({ vmName: 'DC0_H0_VM0' }, /already exists/);
  });
  it('invalid VM names', async () => {
    await expectRejected({ vmName: 'bad/name' }, /not allowed/);
    await expectRejected({ vmName: 'x'.repeat(81) }, /at most 80/);
    await expectRejected({ vmName: ' padded ' }, /spaces/);
    await expectRejected({ vmName: '.' }, /VM name '\.' is not allowed/);
    await expectRejected({ vmName: '..' }, /VM name '\.\.' is not allowed/);
    await expectRejected({ vmName: 'nul\u0000byte' }, /contains '\\u0000'/);
  });
  it('a datastore without enough free space', async () => {
    const dc = await vs.datacenter('DC0');
    const ds = await vs.datastore(dc, 'LocalDS_1');
    // vcsim accounts disk capacity against free space, so a big placeholder disk fills the datastore.
    const filler = await vs.createVm(dc, {
      name: `t-filler-${Date.now().toString(36)}`,
      folder: await vs.folder(dc),
      pool: await vs.resourcePool(dc),
      datastore: ds,
      guestId: 'otherLinux64Guest',
      cpus: 1,
      memoryMiB: 128,
      firmware: 'bios',
      extraConfig: {},
      nics: [],
      disks: [{ capacityBytes: ds.freeSpaceBytes - 512 * 1024 * 1024, thinProvisioned: false, eagerlyScrub: false }],
    });
    try {
      await expectRejected({ datastore: 'LocalDS_1' }, /datastore 'LocalDS_1' has 0\.50 GiB free; restoring 'demo-thick' needs 1\.25 GiB/);
    } finally {
      await filler.destroy();
    }
  });
});
