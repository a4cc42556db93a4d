/**
 * Nothing is taken over or deleted that a restore did not create: resources that already carry the names
 * a restore derives survive it untouched (refused in initialization, or by the conditional create when
 * they appear later), compensation deletes only what carries this restore's id, and a plan run again
 * under the same workflow id leaves the first run's VMs alone. Also: generated bad requests through the
 * real workflows create nothing and leave the worker running.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import { ApplicationFailure } from '@temporalio/common';
import { createAzureActivities } from '../../src/activities/azure';
import { createVSphereActivities, RESTORE_ID_KEY } from '../../src/activities/vsphere';
import { VSphereSessions } from '../../src/activities/vsphere/sessions';
import type { AzureRestoreRequest, AzureRestoreResult } from '../../src/domain/azure';
import { FailureType } from '../../src/domain/errors';
import type { VSphereRestoreRequest, VSphereRestoreResult } from '../../src/domain/vsphere';
import { failureMessage, startAzureRestore, startVSphereRestore } from '../../src/client/restore';
import type { VSphereClient } from '../../src/vsphere';
import { restorePlan, restoreToAzure, restoreToVSphere } from '../../src/workflows';
import type { RestorePlanRequest } from '../../src/workflows/restore-plan';
import { AZURE_FIELDS, VSPHERE_FIELDS, badRequest } from '../helpers/bad-requests';
import { armLog, clearFaults, labArm, labAzure, labContainer, setFaults } from '../helpers/azure';
import {
  importSmallLinuxVm,
  openTestEnv,
  startWorkerProcess,
  writeZeroRestorePoint,
  type TestEnv,
  type WorkerProcess,
} from '../helpers/env';
import { labVSphere } from '../helpers/vsphere';

const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;
const TAG = 'vmrestoreRestoreId';
let env: TestEnv;
let worker: WorkerProcess;
let vs: VSphereClient;
let tmp: string;
/** A small Linux VM that restores to Azure and vSphere. */
let linuxRp: string;
/** One all-zero 64 MiB disk: restores to vSphere without chunk data. */
let zeroRp: string;
const uid = () => `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 5)}`;

/** The failure type of a failed workflow (the ApplicationFailure at the bottom of the cause chain). */
function failureType(err: unknown): string | undefined {
  let e: unknown = err;
  let type: string | undefined;
  while (e && typeof e === 'object') {
    if (e instanceof ApplicationFailure && e.type) type = e.type;
    e = (e as { cause?: unknown }).cause;
  }
  return type;
}

async function scheduledActivities(workflowId: string): Promise<string[]> {
  const history = await env.client.workflow.getHandle(workflowId).fetchHistory();
  return history
    .events!.filter((e) => e.activityTaskScheduledEventAttributes)
    .map((e) => e.activityTaskScheduledEventAttributes!.activityType!.name!);
}

/** Everything in the lab that a restore could create: VM names in vcsim; VMs, disks, NICs and blobs in Azure. */
async function inventory(): Promise<Record<string, string[]>> {
  const dc = await vs.datacenter('DC0');
  const vms = await vs.findObjects(dc.vmFolder, ['VirtualMachine'], [{ type: 'VirtualMachine', paths: ['name'] }]);
  const { compute, network } = labArm();
  const rg = labAzure().resourceGroup;
  const names = async (it: AsyncIterable<{ name?: string }>) => {
    const out: string[] = [];
    for await (const x of it) out.push(x.name ?? '');
    return out.sort();
  };
  return {
    vsphere: vms.map((v) => String(v.props.name)).sort(),
    azureVms: await names(compute.virtualMachines.list(rg)),
    disks: await names(compute.disks.listByResourceGroup(rg)),
    nics: await names(network.networkInterfaces.list(rg)),
    blobs: await names(labContainer().listBlobsFlat()),
  };
}

/** Foreign Azure resources under the names a restore of `vmName` derives, made with the real SDK clients. */
async function makeForeignAzure(vmName: string, what: Array<'osdisk' | 'nic' | 'vm'>, owner?: string) {
  const { compute, network } = labArm();
  const a = labAzure();
  const tags = owner ? { [TAG]: owner } : undefined;
  const nicBody = (tagged: boolean) => ({
    location: a.location,
    ...(tagged && tags ? { tags } : {}),
    ipConfigurations: [{ name: 'ipconfig1', subnet: { id: a.subnetId } }],
  });
  if (what.includes('osdisk')) {
    await compute.disks.createOrUpdate(a.resourceGroup, `${vmName}-osdisk`, {
      location: a.location,
      tags,
      sku: { name: 'Standard_LRS' },
      creationData: { createOption: 'Empty' },
      diskSizeGB: 1,
    });
  }
  if (what.includes('nic')) await network.networkInterfaces.beginCreateOrUpdateAndWait(a.resourceGroup, `${vmName}-nic`, nicBody(true));
  if (what.includes('vm')) {
    // Someone's VM of that name, on its own disk and NIC.
    const own = `other-${uid()}`;
    const disk = await compute.disks.createOrUpdate(a.resourceGroup, `${own}-os`, {
      location: a.location,
      sku: { name: 'Standard_LRS' },
      osType: 'Linux',
      creationData: { createOption: 'Empty' },
      diskSizeGB: 1,
    });
    const nic = await network.networkInterfaces.beginCreateOrUpdateAndWait(a.resourceGroup, `${own}-nic`, nicBody(false));
    await compute.virtualMachines.createOrUpdate(a.resourceGroup, vmName, {
      location: a.location,
      tags,
      hardwareProfile: { vmSize: 'Standard_B1s' },
      storageProfile: { osDisk: { osType: 'Linux', createOption: 'Attach', managedDisk: { id: disk.id } } },
      networkProfile: { networkInterfaces: [{ id: nic.id, primary: true }] },
    });
  }
}

/** The ARM view of each named resource, to compare before and after. */
async function azureSnapshot(vmName: string): Promise<Record<string, string | null>> {
  const { compute, network } = labArm();
  const rg = labAzure().resourceGroup;
  const get = async (f: () => Promise<unknown>) => {
    try {
      return JSON.stringify(await f());
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return null;
      throw err;
    }
  };
  return {
    vm: await get(() => compute.virtualMachines.get(rg, vmName)),
    osdisk: await get(() => compute.disks.get(rg, `${vmName}-osdisk`)),
    nic: await get(() => network.networkInterfaces.get(rg, `${vmName}-nic`)),
  };
}

describe('a restore never takes over or deletes what it did not create', () => {
  before(async () => {
    env = await openTestEnv('ownership');
    worker = await startWorkerProcess(env.taskQueue, { VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1' });
    vs = await labVSphere(env.config);
    await labContainer().createIfNotExists();
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-ownership-'));
    linuxRp = await importSmallLinuxVm(env.config.repository.path, tmp, 'ownership-linux', { image: { hostname: 'owner' } });
    zeroRp = writeZeroRestorePoint(env.config.repository.path, 'ownership-zero', [64 * MiB], [{ network: 'VM Network' }]).id;
  });
  after(async () => {
    await clearFaults().catch(() => {});
    await worker?.stop();
    await vs?.logout().catch(() => {});
    await env?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  it('Azure: a managed disk, NIC or VM already holding a derived name stops the restore in initialization, untouched', async () => {
    const cases: Array<{ what: 'osdisk' | 'nic' | 'vm'; owner?: string; named: RegExp }> = [
      { what: 'osdisk', named: /managed disk 't-own-\w+-osdisk' already exists .*no vmrestoreRestoreId tag/ },
      {
        what: 'nic',
        owner: 'restore-azure-someone-else@1',
        named: /network interface 't-own-\w+-nic' already exists .*vmrestoreRestoreId=restore-azure-someone-else@1/,
      },
      { what: 'vm', owner: 'an-earlier-run', named: /VM 't-own-\w+' already exists .*an-earlier-run/ },
    ];
    for (const c of cases) {
      const vmName = `t-own-${uid()}`;
      await makeForeignAzure(vmName, [c.what], c.owner);
      const before = await azureSnapshot(vmName);
      const inv = await inventory();
      const handle = await startAzureRestore(env.client, { restorePointId: linuxRp, vmName }, { taskQueue: env.taskQueue });
      const err = await handle.result().then(
        () => assert.fail(`restore over a foreign ${c.what} should fail`),
        (e: unknown) => e,
      );
      assert.equal(failureType(err), FailureType.AlreadyExists, failureMessage(err));
      assert.match(failureMessage(err), c.named);
      assert.deepEqual(await scheduledActivities(handle.workflowId), ['prepareAzureRestore'], 'refused before anything was created');
      assert.deepEqual(await azureSnapshot(vmName), before, `the foreign ${c.what} is exactly as it was`);
      assert.deepEqual(await inventory(), inv, 'nothing was created or deleted');
    }
  });

  it('Azure: resources that appear after initialization are refused by the conditional creates and survive compensation', async () => {
    const acts = createAzureActivities({ config: env.config, client: env.client });
    const vmName = `t-race-${uid()}`;
    const restoreId = `ownership-race-${uid()}@run`;
    const plan = await acts.prepareAzureRestore({ restorePointId: linuxRp, vmName, restoreId });
    // Someone takes every name after the initialization checked them.
    await makeForeignAzure(vmName, ['osdisk', 'nic', 'vm'], 'someone-else');
    const blob = labContainer().getPageBlobClient(plan.disks[0].blobName);
    await blob.create(plan.disks[0].capacityBytes + MiB + 512, { metadata: { owner: 'someone-else' } });
    await blob.uploadPages(Buffer.alloc(512, 0x5a), 0, 512);
    const before = await azureSnapshot(vmName);
    const blobBefore = await blob.getProperties();

    const refused = (name: string) => (e: unknown) => {
      assert.match(String((e as Error).message), new RegExp(`'${name}' already exists .*vmrestoreRestoreId=someone-else.*left untouched`));
      assert.equal((e as { type?: string }).type, FailureType.AlreadyExists);
      return true;
    };
    await assert.rejects(acts.createManagedDisks({ plan }), refused(`${vmName}-osdisk`));
    await assert.rejects(acts.createNic({ plan }), refused(`${vmName}-nic`));
    await assert.rejects(acts.createAzureVm({ plan }), refused(vmName));
    // Compensation, in the workflow's order: it reads each resource's tag first and deletes none of these.
    await acts.deleteAzureVm({ plan });
    await acts.deleteNic({ plan });
    await acts.deleteManagedDisks({ plan });
    await acts.deleteVhdBlob({ plan, diskIndex: 0 });
    assert.deepEqual(await azureSnapshot(vmName), before, 'the foreign VM, NIC and disk survive compensation');
    const blobAfter = await blob.getProperties();
    assert.equal(blobAfter.etag, blobBefore.etag, 'the foreign blob survives compensation');
    assert.deepEqual((await blob.downloadToBuffer(0, 512)).subarray(0, 4), Buffer.alloc(4, 0x5a));
  });

  it('Azure: a NIC created between the existence check and the PUT is caught by If-None-Match: * (412), not overwritten', async () => {
    const acts = createAzureActivities({ config: env.config, client: env.client });
    const vmName = `t-412-${uid()}`;
    const plan = await acts.prepareAzureRestore({ restorePointId: linuxRp, vmName, restoreId: `ownership-412-${uid()}@run` });
    const nicPath = `/networkInterfaces/${plan.nicName}$`;
    // Hold the restore's PUT (only the first one) long enough for another client to create the NIC.
    await setFaults([{ kind: 'delay', method: 'PUT', pathPattern: nicPath, delayMs: 3000, count: 1 }]);
    try {
      const creating = acts.createNic({ plan });
      const outcome = creating.then(
        () => 'created',
        (e: unknown) => e,
      );
      await new Promise((r) => setTimeout(r, 1000));
      await makeForeignAzure(vmName, ['nic'], 'the-winner');
      const before = await azureSnapshot(vmName);
      const err = await outcome;
      assert.notEqual(err, 'created', 'the restore must not take over the NIC');
      assert.match(String((err as Error).message), /network interface 't-412-\w+-nic' already exists .*vmrestoreRestoreId=the-winner/);
      assert.deepEqual(await azureSnapshot(vmName), before, 'the winner keeps its NIC exactly as it made it');
      const puts = (await armLog()).filter((e) => e.method === 'PUT' && new RegExp(nicPath).test(e.path)).map((e) => e.status);
      assert.ok(puts.includes(412), `the simulator answered the conditional PUT with 412 (PUT statuses: ${puts.join(', ')})`);
      await acts.deleteNic({ plan });
      assert.deepEqual(await azureSnapshot(vmName), before, 'and compensation leaves it alone');
    } finally {
      await clearFaults();
    }
  });

  it('vSphere: a VM with the planned name survives, whether it is there at initialization or appears before createVm', async () => {
    const dc = await vs.datacenter('DC0');
    const makeVm = async (name: string, extraConfig: Record<string, string>) =>
      vs.createVm(dc, {
        name,
        folder: await vs.folder(dc),
        pool: await vs.resourcePool(dc),
        datastore: await vs.datastore(dc, 'LocalDS_0'),
        guestId: 'otherLinux64Guest',
        cpus: 1,
        memoryMiB: 128,
        firmware: 'bios',
        extraConfig,
        nics: [],
        disks: [{ capacityBytes: 8 * MiB, thinProvisioned: true, eagerlyScrub: false }],
      });
    const describeVm = async (name: string) => {
      const vm = await vs.findVmByName(dc, name);
      assert.ok(vm, `VM '${name}' still exists`);
      const cfg = await vm.config();
      return { ref: vm.ref, uuid: cfg.uuid, disks: cfg.disks.map((d) => d.fileName), extraConfig: cfg.extraConfig };
    };

    // There at initialization: refused there.
    const taken = `t-own-vs-${uid()}`;
    await makeVm(taken, {});
    const before = await describeVm(taken);
    const handle = await startVSphereRestore(
      env.client,
      { restorePointId: zeroRp, vmName: taken, transport: 'nbd' },
      { taskQueue: env.taskQueue },
    );
    const err = await handle.result().then(
      () => assert.fail('restore over an existing VM should fail'),
      (e: unknown) => e,
    );
    assert.equal(failureType(err), FailureType.AlreadyExists);
    assert.match(failureMessage(err), new RegExp(`a VM named '${taken}' already exists`));
    assert.deepEqual(await scheduledActivities(handle.workflowId), ['prepareVSphereRestore']);
    assert.deepEqual(await describeVm(taken), before);

    // Appearing after initialization, under another restore's id: createVm refuses, compensation spares it.
    const acts = createVSphereActivities({ config: env.config, sessions: new VSphereSessions(env.config) });
    const lateName = `t-late-vs-${uid()}`;
    const plan = await acts.prepareVSphereRestore({
      restorePointId: zeroRp,
      vmName: lateName,
      transport: 'nbd',
      restoreId: `own-${uid()}@run`,
    });
    await makeVm(lateName, { [RESTORE_ID_KEY]: 'restore-vsphere-other@run' });
    const late = await describeVm(lateName);
    await assert.rejects(acts.createVm(plan), /a VM named 't-late-vs-\w+' already exists .*restore restore-vsphere-other@run/);
    await acts.destroyRestoredVm({ plan });
    assert.deepEqual(await describeVm(lateName), late);

    // Carrying this restore's id under another name: not adopted, and not destroyed by compensation.
    const renamed = `t-renamed-vs-${uid()}`;
    const plan2 = await acts.prepareVSphereRestore({
      restorePointId: zeroRp,
      vmName: `t-planned-${uid()}`,
      transport: 'nbd',
      restoreId: `own-${uid()}@run`,
    });
    await makeVm(renamed, { [RESTORE_ID_KEY]: plan2.restoreId });
    const other = await describeVm(renamed);
    await assert.rejects(acts.createVm(plan2), /carries this restore's id .* but not the planned name/);
    await acts.destroyRestoredVm({ plan: plan2 });
    assert.deepEqual(await describeVm(renamed), other);
    assert.equal(await vs.findVmByName(dc, plan2.vmName), null, 'nothing was created under the planned name');

    for (const name of [taken, lateName, renamed]) await (await vs.findVmByName(dc, name))!.destroy();
  });

  it('a restore plan run twice under the same workflow id leaves the first run’s VMs untouched', async () => {
    const planId = `restore-plan-twice-${uid()}`;
    const vsName = `t-plan-vs-${uid()}`;
    const azName = `t-plan-az-${uid()}`;
    const args: [RestorePlanRequest] = [
      {
        groups: [
          [
            { restorePointId: zeroRp, vmName: vsName, transport: 'nbd' as const },
            { target: 'azure' as const, restorePointId: linuxRp, vmName: azName },
          ],
        ],
      },
    ];
    const first = await env.client.workflow.execute(restorePlan, { taskQueue: env.taskQueue, workflowId: planId, args });
    for (const r of first.results) assert.equal(r.error, undefined, `${r.vmName}: ${r.error}`);
    const vsFirst = first.results.find((r) => r.target === 'vsphere')!.result as VSphereRestoreResult;
    const azFirst = first.results.find((r) => r.target === 'azure')!.result as AzureRestoreResult;

    const dc = await vs.datacenter('DC0');
    const vsVm = await vs.findVmByName(dc, vsName);
    assert.ok(vsVm);
    const vsBefore = await vsVm.config();
    assert.equal(vsBefore.extraConfig[RESTORE_ID_KEY], vsFirst.restoreId);
    const azBefore = await azureSnapshot(azName);
    const inv = await inventory();

    // Same plan, same workflow id, after the first run closed. Each child's restore id adds its own run id,
    // so the second run cannot mistake the first run's VMs for its own: both children stop in
    // initialization with AlreadyExists (the plan keeps the VM names, so distinct names are not an option).
    const second = await env.client.workflow.execute(restorePlan, { taskQueue: env.taskQueue, workflowId: planId, args });
    for (const r of second.results) {
      assert.ok(r.error, `${r.vmName} must fail in the second run`);
      const childErr = await env.client.workflow
        .getHandle(r.workflowId)
        .result()
        .catch((e: unknown) => e);
      assert.equal(failureType(childErr), FailureType.AlreadyExists, failureMessage(childErr));
      assert.match(failureMessage(childErr), new RegExp(`'${r.vmName}' already exists`));
      assert.deepEqual(
        await scheduledActivities(r.workflowId),
        [r.target === 'azure' ? 'prepareAzureRestore' : 'prepareVSphereRestore'],
        `${r.vmName}: nothing but initialization ran`,
      );
    }
    const vsAfter = await (await vs.findVmByName(dc, vsName))!.config();
    assert.deepEqual(
      { uuid: vsAfter.uuid, disks: vsAfter.disks, id: vsAfter.extraConfig[RESTORE_ID_KEY] },
      { uuid: vsBefore.uuid, disks: vsBefore.disks, id: vsFirst.restoreId },
      'the first run’s vSphere VM is untouched',
    );
    assert.deepEqual(await azureSnapshot(azName), azBefore, 'the first run’s Azure VM, OS disk and NIC are untouched');
    assert.equal(JSON.parse(azBefore.vm!).tags[TAG], azFirst.restoreId);
    assert.deepEqual(await inventory(), inv, 'the second run created and deleted nothing');
    await (await vs.findVmByName(dc, vsName))!.destroy();
  });

  it('generated bad requests through the real workflows: named validation errors, nothing created, the worker survives', async () => {
    const vsBase = { restorePointId: zeroRp, vmName: `t-bad-${uid()}`, transport: 'nbd' };
    const azBase = { restorePointId: linuxRp, vmName: `t-bad-${uid()}`, proxy: 'lab-azure-proxy' };
    const cases = [
      ...fc.sample(badRequest(vsBase, VSPHERE_FIELDS), { numRuns: 6, seed: 7 }).map((c) => ({ ...c, target: 'vsphere' as const })),
      ...fc.sample(badRequest(azBase, AZURE_FIELDS), { numRuns: 6, seed: 7 }).map((c) => ({ ...c, target: 'azure' as const })),
    ];
    // A disk over the 8 TiB page-blob limit (fine for a 32 TiB managed disk): refused before the proxy is on.
    const nine = writeZeroRestorePoint(env.config.repository.path, 'nine-tib', [64 * MiB, 9 * TiB]);
    const inv = await inventory();
    for (const c of cases) {
      const workflowId = `restore-bad-${uid()}`;
      const err = await env.client.workflow
        .execute(c.target === 'azure' ? restoreToAzure : restoreToVSphere, {
          taskQueue: env.taskQueue,
          workflowId,
          args: [c.request as unknown as VSphereRestoreRequest & AzureRestoreRequest],
        })
        .then(
          () => assert.fail(`${c.target} request with bad ${c.field} ${JSON.stringify(c.request[c.field])?.slice(0, 60)} should fail`),
          (e: unknown) => e,
        );
      assert.equal(failureType(err), FailureType.InvalidRequest, failureMessage(err));
      assert.match(failureMessage(err), new RegExp(`request field ${c.field}\\b`));
      assert.deepEqual(await scheduledActivities(workflowId), [c.target === 'azure' ? 'prepareAzureRestore' : 'prepareVSphereRestore']);
    }
    const big = await startAzureRestore(
      env.client,
      { restorePointId: nine.id, vmName: `t-9tib-${uid()}`, proxy: 'lab-azure-proxy' },
      { taskQueue: env.taskQueue },
    );
    const bigErr = await big.result().catch((e: unknown) => e);
    assert.equal(failureType(bigErr), FailureType.AzureLimit);
    assert.match(
      failureMessage(bigErr),
      /disk 'nine-tib disk 1 \(data1\)' of \d+ bytes \(9 TiB\) .*exceeds the Azure page blob maximum of \d+ bytes \(8 TiB\)/,
    );
    assert.deepEqual(await scheduledActivities(big.workflowId), ['prepareAzureRestore'], 'the proxy was never powered on');
    nine.remove();

    assert.deepEqual(await inventory(), inv, 'no VM in vcsim, no resource in the ARM simulator, no blob was created');
    assert.equal(worker.child.exitCode, null, 'the worker is still running');
    assert.doesNotMatch(worker.output(), /unhandled|uncaught|FATAL/i);
    console.log(
      `bad requests through the workflows: ${cases.length + 1} refused, fields: ${[...new Set(cases.map((c) => c.field))].join(', ')}`,
    );
  });
});
