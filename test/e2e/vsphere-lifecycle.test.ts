import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultPayloadConverter } from '@temporalio/common';
import { WorkflowFailedError } from '@temporalio/client';
import { isCancellation } from '@temporalio/workflow';
import { failureMessage, startVSphereRestore } from '../../src/client/restore';
import { restorePlan } from '../../src/workflows';
import type { VSphereClient } from '../../src/vsphere';
import { importVmWithCorruptChunk, replayFinished, type TestEnv, type WorkerProcess } from '../helpers/env';
import { closeVSphereLab, openVSphereLab } from '../helpers/vsphere';

let env: TestEnv;
let worker: WorkerProcess;
let vs: VSphereClient;
const finished: string[] = [];

describe('restore lifecycle: cancel, child workflows, replay', () => {
  before(async () => {
    ({ env, worker, vs } = await openVSphereLab('lifecycle'));
  });
  after(async () => {
    await closeVSphereLab({ env, worker, vs });
  });

  it('cancel mid-restore removes the VM and leaves no HotAdd attachment', async () => {
    const vmName = `t-cancel-${Date.now().toString(36)}`;
    const handle = await startVSphereRestore(
      env.client,
      { restorePointId: env.demo['demo-thick'], vmName, transport: 'hotadd', throttleMBps: 8 },
      { taskQueue: env.taskQueue },
    );
    const dc = await vs.datacenter('DC0');
    const proxy = await vs.findVmByName(dc, 'vmrestore-proxy');
    assert.ok(proxy);
    const proxyOwnDisks = await proxy.attachedDiskFiles();
    const deadline = Date.now() + 60_000;
    let writing = false;
    while (!writing && Date.now() < deadline) {
      const desc = await handle.describe();
      const pa = desc.raw.pendingActivities?.find((a) => a.activityType?.name === 'writeDisk');
      writing =
        !!pa?.heartbeatDetails?.payloads?.[0] &&
        (defaultPayloadConverter.fromPayload(pa.heartbeatDetails.payloads[0]) as { offset: number }) !== undefined;
      if (!writing) await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(writing, 'a disk write was under way');
    assert.ok((await proxy.attachedDiskFiles()).length > proxyOwnDisks.length, 'the disk was hot-added to the proxy while writing');
    assert.ok(await vs.findVmByName(dc, vmName), 'the VM existed while writing');
    await handle.cancel();
    const err = await handle.result().then(
      () => assert.fail('restore should end cancelled'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError && isCancellation(err.cause), `cancelled, got ${String(err)}`);
    assert.equal(await vs.findVmByName(dc, vmName), null, 'the half-restored VM is gone');
    assert.deepEqual(await proxy.attachedDiskFiles(), proxyOwnDisks, 'no disk remains attached to the proxy');
    const desc = await handle.describe();
    assert.equal(desc.status.name, 'CANCELLED');
    finished.push(handle.workflowId);
  });

  it('a corrupt backup chunk fails the restore without retries, naming the chunk, and removes the VM', async () => {
    const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrs-corrupt-'));
    const { restorePointId, hash, chunkFile } = await importVmWithCorruptChunk(env.config.repository.path, tmp);
    const vmName = `t-corrupt-${Date.now().toString(36)}`;
    const handle = await startVSphereRestore(env.client, { restorePointId, vmName, transport: 'direct-nas' }, { taskQueue: env.taskQueue });
    const message = failureMessage(await handle.result().catch((e: unknown) => e));
    assert.match(message, new RegExp(`disk 1 at offset \\d+: chunk ${hash} is corrupt`));
    const events = (await handle.fetchHistory()).events ?? [];
    const attempts = events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
    assert.ok(
      attempts.every((a) => a === 1),
      `corruption is not retried (attempts ${attempts.join(',')})`,
    );
    const dc = await vs.datacenter('DC0');
    assert.equal(await vs.findVmByName(dc, vmName), null, 'the half-restored VM is gone');
    rmSync(chunkFile);
    rmSync(tmp, { recursive: true, force: true });
  });

  it('a parent workflow starts the restore as a child and receives its result', async () => {
    const vmName = `t-child-${Date.now().toString(36)}`;
    const parentId = `restore-plan-test-${Date.now().toString(36)}`;
    const result = await env.client.workflow.execute(restorePlan, {
      taskQueue: env.taskQueue,
      workflowId: parentId,
      args: [{ groups: [[{ restorePointId: env.demo['demo-thick'], vmName, transport: 'nbd' }]] }],
    });
    assert.equal(result.results.length, 1);
    const child = result.results[0];
    assert.equal(child.error, undefined, `child failed: ${child.error}`);
    assert.equal(child.result?.vmName, vmName);
    assert.equal(child.result?.disks.length, 2);
    assert.ok(child.workflowId.startsWith(parentId + '/'), 'child id derives from the parent');
    const history = await env.client.workflow.getHandle(parentId).fetchHistory();
    assert.ok(
      history.events!.some((e) => e.childWorkflowExecutionCompletedEventAttributes),
      'parent history records the completed child',
    );
    finished.push(child.workflowId, parentId);
    const dc = await vs.datacenter('DC0');
    await (await vs.findVmByName(dc, vmName))?.destroy();
  });

  it('histories of finished restores replay against the current workflow code', async () => {
    const replayed = await replayFinished(env.client, finished);
    assert.equal(replayed, finished.length);
    assert.ok(replayed >= 2);
  });
});
