import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { labArm, labAzure } from '../helpers/azure';
import { openTestEnv, runCli, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { labVSphere } from '../helpers/vsphere';

let env: TestEnv;
let worker: WorkerProcess;

/** The vmrestore CLI against the lab on the test's task queue: exit code and output. */
const cli = (...args: string[]) => runCli(env.taskQueue, args);

function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]) as Record<string, unknown>;
}

describe('vmrestore CLI (restore commands against the lab)', () => {
  before(async () => {
    env = await openTestEnv('cli');
    worker = await startWorkerProcess(env.taskQueue);
  });
  after(async () => {
    await worker?.stop();
    await env?.close();
  });

  it('restore azure --wait --json reports vmId, generation, per-disk blob and managed disk, and guest changes', async () => {
    const vmName = `tcli${Date.now().toString(36).slice(-7)}`;
    const r = await cli('restore', 'azure', '--restore-point', env.demo['demo-windows'], '--vm-name', vmName, '--wait', '--json');
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const out = lastJson(r.stdout);
    assert.equal(out.status, 'COMPLETED');
    const result = out.result as {
      vmId: string;
      generation: number;
      disks: { blobUrl: string; managedDiskId: string; bytesUploaded: number }[];
      guestChanges: { path: string }[];
    };
    assert.match(result.vmId, /^[0-9a-f-]{36}$/);
    assert.equal(result.generation, 1);
    assert.equal(result.disks.length, 1);
    assert.match(result.disks[0].blobUrl, /\/vhds\/.+\/disk0\.vhd$/);
    assert.ok(result.disks[0].bytesUploaded > 0);
    assert.ok(result.guestChanges.length >= 10);
    const a = labAzure();
    const disk = await labArm().compute.disks.get(a.resourceGroup, `${vmName}-osdisk`);
    assert.equal(disk.id?.toLowerCase(), result.disks[0].managedDiskId.toLowerCase());

    const s = await cli('status', String(out.workflowId), '--json');
    assert.equal(s.code, 0, s.stderr);
    assert.equal(lastJson(s.stdout).status, 'COMPLETED');
  });

  it('restore azure with a bad VM name exits non-zero and names it', async () => {
    const r = await cli('restore', 'azure', '--restore-point', env.demo['demo-linux'], '--vm-name', 'bad name!', '--wait', '--json');
    assert.notEqual(r.code, 0);
    assert.match(r.stdout + r.stderr, /'bad name!' is invalid/);
  });

  it('restore vsphere --wait --json restores both disks of a VM', async () => {
    const vmName = `t-cli-${Date.now().toString(36)}`;
    const r = await cli(
      'restore',
      'vsphere',
      '--restore-point',
      env.demo['demo-thick'],
      '--vm-name',
      vmName,
      '--transport',
      'nbd',
      '--wait',
      '--json',
    );
    assert.equal(r.code, 0, r.stderr + r.stdout);
    const out = lastJson(r.stdout);
    assert.equal(out.status, 'COMPLETED');
    const result = out.result as { vmName: string; disks: { transport: string; bytesWritten: number }[] };
    assert.equal(result.vmName, vmName);
    assert.deepEqual(
      result.disks.map((d) => d.transport),
      ['nbd', 'nbd'],
    );
    const vs = await labVSphere(env.config);
    const dc = await vs.datacenter('DC0');
    const vm = await vs.findVmByName(dc, vmName);
    assert.ok(vm, 'the VM exists in vCenter');
    await vm.destroy();
  });
});
