import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultPayloadConverter } from '@temporalio/common';
import { buildDataDiskImage } from '../../src/lab/demo';
import type { DiskCheckpoint } from '../../src/domain/vsphere';
import { startVSphereRestore } from '../../src/client/restore';
import { RESTORE_ID_KEY } from '../../src/activities/vsphere';
import type { VSphereClient } from '../../src/vsphere';
import { importTestVm, openTestEnv, readBytes, startWorkerProcess, type TestEnv } from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { labVSphere, localFlatFile } from '../helpers/vsphere';
import { processTreeIo } from '../helpers/proc-io';

const MiB = 1024 * 1024;
let env: TestEnv;
let vs: VSphereClient;
let rpId: string;
let tmp: string;

/** Highest offset (exclusive) of a written block: the data is random, so any non-zero block was written. */
function writtenExtent(file: string, capacity: number): number {
  for (let off = capacity - MiB; off >= 0; off -= MiB) {
    if (readBytes(file, off, MiB).some((b) => b !== 0)) return off + MiB;
  }
  return 0;
}

describe('crash during a disk write', () => {
  before(async () => {
    env = await openTestEnv('crash');
    vs = await labVSphere(env.config);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-crash-'));
    buildDataDiskImage(path.join(tmp, 'disk0.img'), 384 * MiB, [[0, 384 * MiB]], 'crash-test');
    rpId = await importTestVm(env.config.repository.path, tmp, { name: 'crash-vm', disks: [{ path: 'disk0.img', provisioning: 'thick' }] });
  });
  after(async () => {
    await vs?.logout().catch(() => {});
    await env?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('a new worker finishes after SIGKILL; the disk is identical, one VM exists, re-written bytes stay within a checkpoint interval', async () => {
    const throttleMBps = 48;
    const first = await startWorkerProcess(env.taskQueue);
    const vmName = `t-crash-${Date.now().toString(36)}`;
    const handle = await startVSphereRestore(
      env.client,
      { restorePointId: rpId, vmName, transport: 'direct-nas', throttleMBps },
      { taskQueue: env.taskQueue },
    );
    let seen: DiskCheckpoint | undefined;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      const desc = await handle.describe();
      const pa = desc.raw.pendingActivities?.find((a) => a.activityType?.name === 'writeDisk');
      const payload = pa?.heartbeatDetails?.payloads?.[0];
      if (payload) {
        seen = defaultPayloadConverter.fromPayload(payload) as DiskCheckpoint;
        if (seen.offset >= 96 * MiB) break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(seen && seen.offset >= 96 * MiB, `disk write under way before the crash (saw ${JSON.stringify(seen)})`);
    await first.kill();

    const dc = await vs.datacenter('DC0');
    const vm = await vs.findVmByName(dc, vmName);
    assert.ok(vm);
    const file = localFlatFile((await vm.config()).disks[0].fileName);
    const extentAtCrash = writtenExtent(file, 384 * MiB);
    assert.ok(extentAtCrash < 384 * MiB, 'the crash happened before the disk was complete');

    const second = await startWorkerProcess(env.taskQueue);
    try {
      const result = await handle.result();
      const disk = result.disks[0];
      // What the new worker really wrote, counted by the kernel (every write system call of its process
      // tree since it started), not what the worker reports: the rest of the disk, plus what it re-wrote.
      const written = processTreeIo(second.child.pid!).wchar;
      const rest = 384 * MiB - extentAtCrash;
      const rewritten = Math.max(0, written - rest);
      // Checkpoint interval + one second of heartbeat lag at the throttle, plus the worker's own writes
      // besides the disk (logs, connections to Temporal).
      const bound = env.config.restore.checkpointBytes + throttleMBps * 1_000_000 * 1 + 4 * MiB;
      console.log(
        `crash figures: written before crash ${(extentAtCrash / MiB).toFixed(0)} MiB, the new worker wrote ${(written / MiB).toFixed(1)} MiB ` +
          `(the rest ${(rest / MiB).toFixed(1)} MiB + ${(rewritten / MiB).toFixed(1)} MiB again; it reports resuming at ${(disk.resumedFromOffset / MiB).toFixed(0)} MiB), ` +
          `bound: checkpoint ${env.config.restore.checkpointBytes / MiB} MiB + 1 s of heartbeat lag at ${throttleMBps} MB/s`,
      );
      assert.ok(written >= rest, `the new worker wrote at least the part missing at the crash (${written} >= ${rest})`);
      assert.ok(
        rewritten <= bound && rewritten < extentAtCrash,
        `re-written ${rewritten} bytes <= ${bound}: the retry resumed from a checkpoint, not from zero (${extentAtCrash} written before the crash)`,
      );
      assert.equal(await diskDigest(file), await backedUpDiskDigest(env.config.repository.path, rpId, 0), 'disk is byte-identical');
      const vms = await vs.findVmsByExtraConfig(dc, RESTORE_ID_KEY, result.restoreId);
      assert.equal(vms.length, 1, 'exactly one VM for the restore');
      const history = await handle.fetchHistory();
      const attempts = history
        .events!.filter((e) => e.activityTaskStartedEventAttributes)
        .map((e) => e.activityTaskStartedEventAttributes!.attempt ?? 1);
      // Either Temporal's retry reached the new worker, or (when it started after the retry's 5 s on the
      // proxy queue) the workflow handed the disk, with its checkpoint, to a new write on the restarted proxy.
      const writes = history.events!.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'writeDisk').length;
      assert.ok(
        attempts.some((a) => a >= 2) || writes >= 2,
        `the disk write ran again on the new worker (attempts ${attempts.join(', ')}; ${writes} writeDisk scheduled)`,
      );
      await vms[0].destroy();
    } finally {
      await second.stop();
    }
  });
});
