import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { failureMessage, startVSphereRestore } from '../../src/client/restore';
import { labConfigPath } from '../../src/config';
import { getRestorePoint } from '../../src/repository';
import type { VSphereClient } from '../../src/vsphere';
import { makeDataMoverCredentials, startDataMoverProcess, type DataMoverCredentials, type DataMoverProcess } from '../helpers/data-mover';
import { importVmWithCorruptChunk, openTestEnv, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { labVSphere, localFlatFile } from '../helpers/vsphere';

let env: TestEnv;
let worker: WorkerProcess;
let vs: VSphereClient;
let mover: DataMoverProcess;
let creds: DataMoverCredentials;
let work: string;
let workerConfig: string;

describe('restore to vSphere with the worker reading through the repository data mover', () => {
  before(async () => {
    env = await openTestEnv('reposerve');
    work = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-reposerve-'));
    creds = makeDataMoverCredentials(path.join(work, 'pki'));
    mover = await startDataMoverProcess({ repoDir: env.config.repository.path, dir: work, creds });
    // The lab's configuration with the repository swapped for the data mover; its local path does not exist,
    // so every restore point and chunk the worker gets came over HTTPS.
    const lab = JSON.parse(readFileSync(labConfigPath(), 'utf8')) as Record<string, unknown>;
    lab.repository = {
      path: path.join(work, 'no-local-repository'),
      url: mover.url,
      tokenFile: creds.tokenFile,
      thumbprint: creds.thumbprint,
    };
    workerConfig = path.join(path.dirname(labConfigPath()), `worker-data-mover-${process.pid}.config.json`);
    writeFileSync(workerConfig, JSON.stringify(lab, null, 2), { mode: 0o600 });
    worker = await startWorkerProcess(env.taskQueue, { VMRESTORE_CONFIG: workerConfig });
    vs = await labVSphere(env.config);
  });
  after(async () => {
    await worker?.stop();
    await mover?.kill();
    await vs?.logout().catch(() => {});
    await env?.close();
    if (workerConfig) rmSync(workerConfig, { force: true });
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it('restores the two-disk VM byte for byte while the repository host restarts mid-restore', async () => {
    const rpId = env.demo['demo-thick'];
    const rp = await getRestorePoint(env.config.repository.path, rpId);
    const vmName = `t-remote-${Date.now().toString(36)}`;
    // Throttled so that the restart lands while the disks are being read.
    const handle = await startVSphereRestore(
      env.client,
      { restorePointId: rpId, vmName, transport: 'direct-nas', throttleMBps: 10 },
      { taskQueue: env.taskQueue },
    );
    await new Promise((r) => setTimeout(r, 5000));
    await mover.kill();
    await new Promise((r) => setTimeout(r, 2000));
    mover = await startDataMoverProcess({ repoDir: env.config.repository.path, dir: work, creds, port: mover.port });
    const result = await handle.result();
    const dc = await vs.datacenter('DC0');
    const vm = await vs.findVmByName(dc, vmName);
    assert.ok(vm, `VM ${vmName} exists`);
    const cfg = await vm.config();
    assert.equal(cfg.disks.length, rp.vm.disks.length, 'disk count');
    for (const d of rp.vm.disks) {
      assert.equal(result.disks[d.index].transport, 'direct-nas');
      const file = localFlatFile(cfg.disks[d.index].fileName);
      assert.equal(
        await diskDigest(file),
        await backedUpDiskDigest(env.config.repository.path, rpId, d.index),
        `disk ${d.index} bytes (${file}) equal the backup`,
      );
    }
    await vm.destroy();
  });

  it('a chunk corrupted on the repository host fails the restore without retries, naming VM, disk and offset', async () => {
    const tmp = mkdtempSync(path.join(work, 'corrupt-'));
    const { restorePointId, hash, chunkFile } = await importVmWithCorruptChunk(env.config.repository.path, tmp);
    const vmName = `t-remote-corrupt-${Date.now().toString(36)}`;
    const handle = await startVSphereRestore(env.client, { restorePointId, vmName, transport: 'direct-nas' }, { taskQueue: env.taskQueue });
    try {
      const message = failureMessage(await handle.result().catch((e: unknown) => e));
      assert.match(
        message,
        new RegExp(
          `VM 'corrupt-chunk' disk 1 at offset \\d+: chunk ${hash} is corrupt \\(sha256 mismatch; served by ${mover.url.replace(/\./g, '\\.')}\\)`,
        ),
      );
      const events = (await handle.fetchHistory()).events ?? [];
      const attempts = events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt);
      assert.ok(
        attempts.every((a) => a === 1),
        `corruption is not retried (attempts ${attempts.join(',')})`,
      );
      assert.equal(await vs.findVmByName(await vs.datacenter('DC0'), vmName), null, 'the half-restored VM is gone');
    } finally {
      rmSync(chunkFile, { force: true });
    }
  });
});
