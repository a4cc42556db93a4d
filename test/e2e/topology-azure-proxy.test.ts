import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AzureRestoreResult } from '../../src/domain/azure';
import { startAzureRestore } from '../../src/client/restore';
import { getRestorePoint } from '../../src/repository';
import { openTestEnv, type TestEnv, type WorkerProcess } from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { downloadManagedDisk, labArm, labAzure } from '../helpers/azure';
import { makeDataMoverCredentials, startDataMoverProcess, type DataMoverProcess } from '../helpers/data-mover';
import { buildTopology, noTopology, type Topology } from '../helpers/topology';
import { historyEvents } from '../helpers/workflow-env';

/**
 * The Azure proxy as a host of its own: the control worker on `backup`, `vmrestore worker --azure-proxy`
 * in the `azproxy01` namespace (in Azure, the proxy VM), reading the backup through the repository data
 * mover on `repo01` and writing the page blobs to Azurite on `backup`. Every byte of the upload crosses
 * azproxy01's link twice (in from repo01, out to the storage account); the control worker moves none.
 */

const MiB = 1024 * 1024;
const PROXY = 'lab-azure-proxy';
let env: TestEnv;
let topo: Topology;
let tmp: string;
let mover: DataMoverProcess | undefined;
const workers: WorkerProcess[] = [];

describe('the Azure proxy on a host of its own: azproxy01 uploads what repo01 serves', { skip: noTopology(), timeout: 900_000 }, () => {
  before(async () => {
    env = await openTestEnv('topoazure');
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-topoazure-'));
    topo = await buildTopology({ hosts: ['repo01', 'azproxy01'] });
  });
  after(async () => {
    for (const w of workers) await w.stop().catch(() => {});
    await mover?.stop().catch(() => {});
    await topo?.teardown();
    await env?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('the upload runs on azproxy01 with its data from repo01; the control worker on backup moves no disk byte', async () => {
    const creds = makeDataMoverCredentials(path.join(tmp, 'pki'));
    mover = await startDataMoverProcess({
      repoDir: env.config.repository.path,
      dir: tmp,
      creds,
      host: topo.address('repo01'),
      port: 8443,
      wrap: (cmd, args) => topo.command('repo01', cmd, args),
    });
    assert.equal(new URL(mover.url).hostname, topo.address('repo01'));
    // A queue of its own, so no earlier poller of the proxy queue (a lab worker's embedded one) is remembered.
    const queue = `${env.taskQueue}-tazpx`;
    const split = {
      VMRESTORE_LAB_AZURE_PROXY_WORKER: 'separate',
      VMRESTORE_AZURE_PROXY_IDLE_SECONDS: '2',
      VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1',
    };
    const control = await topo.startWorker('backup', queue, split);
    workers.push(control);
    assert.doesNotMatch(control.output(), /Azure proxy worker/, 'the control worker does not serve the proxy queue');
    // The proxy's host has no repository of its own: every chunk comes from repo01.
    const proxyConfig = topo.hostConfig('azproxy01', (c) => ({
      ...c,
      repository: {
        path: path.join(tmp, 'no-local-repository'),
        url: mover!.url,
        tokenFile: creds.tokenFile,
        thumbprint: creds.thumbprint,
      },
    }));
    const proxy = await topo.startWorker('azproxy01', queue, { ...split, ...proxyConfig }, ['--azure-proxy', PROXY]);
    workers.push(proxy);
    assert.match(proxy.output(), new RegExp(`Azure proxy worker \\(${PROXY}\\) polling task queue '${queue}-azure-proxy-${PROXY}'`));

    const rpId = env.demo['demo-thick'];
    const vmName = `t-tazpx-${Date.now().toString(36)}`;
    const repo0 = topo.linkBytes('repo01');
    const az0 = topo.linkBytes('azproxy01');
    const handle = await startAzureRestore(env.client, { restorePointId: rpId, vmName, proxy: PROXY }, { taskQueue: queue });
    const result: AzureRestoreResult = await handle.result();
    const repo = topo.linkBytes('repo01');
    const az = topo.linkBytes('azproxy01');
    const repoSent = repo.sent - repo0.sent;
    const azIn = az.received - az0.received;
    const azOut = az.sent - az0.sent;
    const uploaded = result.disks.reduce((n, d) => n + d.bytesUploaded, 0);

    // Who did what, from the history: the uploads on azproxy01, everything else on backup.
    const proxyId = new RegExp(`^${proxy.child.pid}@azproxy01/vmrestore-azure-proxy-${PROXY}$`);
    const controlId = new RegExp(`^${control.child.pid}@backup(/|$)`);
    const events = await historyEvents(handle);
    const scheduled = new Map(
      events.filter((e) => e.activityTaskScheduledEventAttributes).map((e) => [String(e.eventId), e.activityTaskScheduledEventAttributes!]),
    );
    const started = events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!);
    const uploads = started.filter((s) => scheduled.get(String(s.scheduledEventId))?.activityType?.name === 'uploadVhd');
    assert.equal(uploads.length, result.disks.length, 'one upload per disk, none retried');
    for (const u of uploads) assert.match(u.identity ?? '', proxyId, 'the upload ran on azproxy01');
    for (const s of started.filter((x) => !uploads.includes(x))) {
      const type = scheduled.get(String(s.scheduledEventId))?.activityType?.name;
      assert.match(s.identity ?? '', controlId, `${type} ran on backup`);
    }
    for (const e of events.filter((x) => x.workflowTaskStartedEventAttributes)) {
      assert.match(e.workflowTaskStartedEventAttributes!.identity ?? '', controlId, 'workflow tasks ran on backup');
    }
    for (const d of result.disks) {
      assert.equal(d.uploadedBy.proxy, PROXY);
      assert.match(d.uploadedBy.workerIdentity, proxyId);
    }

    // The bytes: repo01 sent the disks' data, azproxy01 took it in and sent it on to the storage account.
    assert.ok(uploaded > 64 * MiB, `the upload carried data (${uploaded} bytes)`);
    assert.ok(repoSent >= 0.99 * uploaded, `repo01 sent the data (${repoSent} of ${uploaded} bytes uploaded)`);
    assert.ok(azIn >= 0.99 * uploaded, `azproxy01 received it (${azIn} bytes)`);
    assert.ok(azOut >= uploaded, `azproxy01 sent the pages out (${azOut} bytes)`);

    // What azproxy01 uploaded is what the managed disks were made of.
    const a = labAzure();
    await labArm().compute.virtualMachines.deallocate(a.resourceGroup, vmName);
    const dataDisk = path.join(tmp, `${vmName}-datadisk1.img`);
    await downloadManagedDisk(labArm(), result.disks[1].managedDiskId, dataDisk);
    assert.equal(await diskDigest(dataDisk), await backedUpDiskDigest(env.config.repository.path, rpId, 1), 'data disk bytes');
    // The proxy's and the helper's lease workflows on this queue go with it: nothing of the test stays running.
    for await (const w of env.client.workflow.list({ query: `TaskQueue = '${queue}' AND ExecutionStatus = 'Running'` })) {
      await env.client.workflow
        .getHandle(w.workflowId)
        .terminate('test done')
        .catch(() => {});
    }
    const rp = await getRestorePoint(env.config.repository.path, rpId);
    console.log(
      `azproxy01: ${(uploaded / MiB).toFixed(1)} MiB uploaded for ${rp.vm.disks.length} disks; ` +
        `repo01 sent ${(repoSent / MiB).toFixed(1)} MiB, azproxy01 in ${(azIn / MiB).toFixed(1)} MiB, out ${(azOut / MiB).toFixed(1)} MiB`,
    );
  });
});
