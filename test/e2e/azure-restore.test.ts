import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, openSync, readFileSync, rmSync, writeSync, closeSync, writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WithStartWorkflowOperation } from '@temporalio/client';
import { defaultPayloadConverter } from '@temporalio/common';
import { parseVhdFooter } from '../../src/azure/vhd';
import { buildDataDiskImage } from '../../src/lab/demo';
import type { AzureRestoreRequest, AzureRestoreResult, UploadCheckpoint } from '../../src/domain/azure';
import { buildLinuxDiskImage } from '../../src/lab/images/linux-image';
import { Ext4Volume } from '../../src/guest/linux/ext4';
import { readGuestFile } from '../../src/guest/linux/prep';
import { readHiveValueFromDisk, readWindowsFileFromDisk } from '../../src/guest/windows/prep';
import { readPartitionTable } from '../../src/guest/disk/partition';
import { getRestorePoint } from '../../src/repository';
import { failureMessage, getRestoreStatus, startAzureRestore } from '../../src/client/restore';
import {
  acquireLease,
  progressQuery,
  leaseStateQuery,
  leaseWorkflowId,
  releaseLease,
  resourceLease,
  restorePlan,
} from '../../src/workflows';
import { RestoreKind, RestorePhaseKey, RestoreVm } from '../../src/domain/search-attributes';
import {
  importSmallLinuxVm,
  importTestVm,
  importVmWithCorruptChunk,
  openTestEnv,
  replayFinished,
  startWorkerProcess,
  type TestEnv,
  type WorkerProcess,
  writeZeroRestorePoint as writeZeroRp,
} from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { processTreeIo } from '../helpers/proc-io';
import { assertLinuxChangesOnDisk, assertWindowsChangesOnDisk } from '../helpers/guest-changes';
import { armLog, clearFaults, downloadManagedDisk, labArm, labAzure, labContainer, setFaults } from '../helpers/azure';
import { materializeVhdBlob } from '../../src/azure/blob-image-read';

const MiB = 1024 * 1024;
let env: TestEnv;
let worker: WorkerProcess;
let tmp: string;
const PROXY_IDLE_SECONDS = 6;
/** Finished restore workflows, replayed against the current workflow code at the end. */
const finished: string[] = [];

async function restore(req: Partial<AzureRestoreRequest> & { restorePointId: string; vmName: string }): Promise<AzureRestoreResult> {
  const handle = await startAzureRestore(env.client, req, { taskQueue: env.taskQueue });
  return handle.result();
}

/** Downloads a VHD page blob into a local file (data + footer), sparsely. */
async function downloadVhd(blobUrl: string, capacityBytes: number): Promise<{ raw: string; vhd: string; footer: Buffer }> {
  const name = decodeURIComponent(new URL(blobUrl).pathname.split('/').slice(3).join('/'));
  const blob = labContainer().getPageBlobClient(name);
  const props = await blob.getProperties();
  const size = props.contentLength!;
  const raw = path.join(tmp, `${createHash('sha1').update(blobUrl).digest('hex')}.raw`);
  await materializeVhdBlob(blob, { capacityBytes, imagePath: raw });
  const footer = await blob.downloadToBuffer(size - 512, 512);
  const vhd = raw + '.vhd';
  const r = spawnSync('cp', ['--sparse=always', raw, vhd]);
  assert.equal(r.status, 0);
  spawnSync('truncate', ['-s', String(size - 512), vhd]);
  const fd = openSync(vhd, 'r+');
  writeSync(fd, footer, 0, 512, size - 512);
  closeSync(fd);
  return { raw, vhd, footer };
}

async function checkVhd(blobUrl: string, capacityBytes: number): Promise<{ raw: string }> {
  const { raw, vhd, footer } = await downloadVhd(blobUrl, capacityBytes);
  const f = parseVhdFooter(footer);
  assert.equal(f.cookie, 'conectix');
  assert.ok(f.checksumValid, 'footer checksum');
  assert.equal(f.diskType, 2, 'fixed disk');
  assert.equal(f.currentSize % MiB, 0, 'virtual size is a whole number of MiB');
  assert.ok(f.currentSize >= capacityBytes);
  const info = JSON.parse(spawnSync('qemu-img', ['info', '-f', 'vpc', '--output', 'json', vhd], { encoding: 'utf8' }).stdout);
  assert.equal(info.format, 'vpc', 'qemu-img reads it as a VHD');
  rmSync(vhd);
  return { raw };
}

const writeZeroRestorePoint = (name: string, capacities: number[]) => writeZeroRp(env.config.repository.path, name, capacities);

describe('restore to Azure (Temporal + Azurite + ARM simulator)', () => {
  before(async () => {
    env = await openTestEnv('azure');
    worker = await startWorkerProcess(env.taskQueue, {
      VMRESTORE_AZURE_PROXY_IDLE_SECONDS: String(PROXY_IDLE_SECONDS),
      VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1',
    });
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-azure-'));
  });
  after(async () => {
    await clearFaults().catch(() => {});
    await worker?.stop();
    await env?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('restores a two-disk Linux VM: VHDs, managed disks, Gen1 VM; the managed OS disk is prepared, its blob is not', async () => {
    const rpId = env.demo['demo-thick'];
    const rp = await getRestorePoint(env.config.repository.path, rpId);
    const vmName = `t-linux-${Date.now().toString(36)}`;
    const handle = await startAzureRestore(env.client, { restorePointId: rpId, vmName }, { taskQueue: env.taskQueue });
    const result = await handle.result();
    finished.push(handle.workflowId);
    assert.equal(result.osType, 'Linux');
    // Preparation ran on the helper appliance's own task queue, picked up by the helper's worker.
    const events = (await handle.fetchHistory()).events ?? [];
    const prepIds = events
      .filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'prepareGuestOnHelper')
      .map((e) => {
        assert.equal(e.activityTaskScheduledEventAttributes!.taskQueue?.name, `${env.taskQueue}-helper-${labAzure().location}`);
        return String(e.eventId);
      });
    assert.equal(prepIds.length, 1);
    const started = events.find((e) => prepIds.includes(String(e.activityTaskStartedEventAttributes?.scheduledEventId ?? '')));
    assert.match(started?.activityTaskStartedEventAttributes?.identity ?? '', /\/vmrestore-helper-westeurope$/);
    assert.equal(result.generation, 1);
    assert.equal(result.disks.length, 2);
    // The data disk is untouched by preparation: byte for byte the backup.
    const data = await checkVhd(result.disks[1].blobUrl, rp.vm.disks[1].capacityBytes);
    assert.equal(
      await diskDigest(data.raw),
      await backedUpDiskDigest(env.config.repository.path, rpId, 1),
      'data disk VHD holds the backed-up bytes',
    );
    // The preparation edited the managed disk attached to the helper: the uploaded blob is still the backup.
    const osBlob = await checkVhd(result.disks[0].blobUrl, rp.vm.disks[0].capacityBytes);
    const backedUpOs = await backedUpDiskDigest(env.config.repository.path, rpId, 0);
    assert.equal(await diskDigest(osBlob.raw), backedUpOs, 'the OS disk blob is the unprepared disk');
    // The managed disk carries the guest changes: read as on Azure, through a read SAS, once the VM is deallocated.
    const { compute: arm } = labArm();
    await arm.virtualMachines.deallocate(labAzure().resourceGroup, vmName);
    const managedOs = path.join(tmp, `${vmName}-osdisk.img`);
    await downloadManagedDisk(labArm(), result.disks[0].managedDiskId, managedOs);
    assert.notEqual(await diskDigest(managedOs), backedUpOs, 'the managed OS disk is prepared');
    const table = await readPartitionTable(managedOs);
    const root = table.partitions.find((p) => p.type === 'linux')!;
    const fstab = await readGuestFile(managedOs, root.startBytes, '/etc/fstab');
    assert.match(fstab!, /^UUID=\S+\s+\/\s/m, 'root fstab entry by UUID');
    const grub = await readGuestFile(managedOs, root.startBytes, '/etc/default/grub');
    assert.match(grub!, /console=ttyS0,115200n8/);
    assert.match(grub!, /net\.ifnames=0/);
    assert.doesNotMatch(grub!, /rootdelay/);
    const managedData = path.join(tmp, `${vmName}-datadisk1.img`);
    await downloadManagedDisk(labArm(), result.disks[1].managedDiskId, managedData);
    assert.equal(
      await diskDigest(managedData),
      await backedUpDiskDigest(env.config.repository.path, rpId, 1),
      'the data disk is only read',
    );
    await arm.virtualMachines.start(labAzure().resourceGroup, vmName);
    // Read from the prepared disk itself, not from the restore's own change list.
    const wants = await new Ext4Volume(managedOs, root.startBytes).statMany(
      ['ssh.service', 'sshd.service'].map((u) => `/etc/systemd/system/multi-user.target.wants/${u}`),
    );
    assert.ok(
      [...wants.values()].some((st) => st?.type === 'symlink'),
      `sshd enabled: ${JSON.stringify([...wants])}`,
    );
    const firewalldConf = await readGuestFile(managedOs, root.startBytes, '/etc/firewalld/firewalld.conf');
    const zone = /^DefaultZone=(\S+)$/m.exec(firewalldConf ?? '')?.[1] ?? 'public';
    assert.match(
      (await readGuestFile(managedOs, root.startBytes, `/etc/firewalld/zones/${zone}.xml`)) ?? '(no zone file)',
      /<service name="ssh"\/>/,
      `firewalld zone ${zone} allows ssh`,
    );
    // Each change the restore reported is on the managed disk as reported.
    await assertLinuxChangesOnDisk(managedOs, [root.startBytes], result.guestChanges);

    const { compute } = labArm();
    const a = labAzure();
    const vm = await compute.virtualMachines.get(a.resourceGroup, vmName, { expand: 'instanceView' });
    assert.equal(vm.hardwareProfile?.vmSize, 'Standard_D2s_v3');
    assert.equal(vm.storageProfile?.osDisk?.osType, 'Linux');
    assert.equal(vm.storageProfile?.dataDisks?.length, 1);
    const view = await compute.virtualMachines.instanceView(a.resourceGroup, vmName);
    assert.ok(
      view.statuses?.some((s) => s.code === 'PowerState/running'),
      'VM is running',
    );
    assert.equal(view.hyperVGeneration, 'V1');
    const osDisk = await compute.disks.get(a.resourceGroup, `${vmName}-osdisk`);
    assert.equal(osDisk.osType, 'Linux');
    assert.equal(osDisk.hyperVGeneration, 'V1');
    // The helper appliance has nothing attached any more.
    const helper = await compute.virtualMachines.get(a.resourceGroup, a.helperVmName);
    assert.equal(helper.storageProfile?.dataDisks?.length ?? 0, 0, 'disks detached from the helper');
  });

  it('with the helper worker in its own process (worker --helper), the Linux disk is prepared there', async () => {
    const split = { VMRESTORE_LAB_HELPER_WORKER: 'separate', VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1' };
    await worker.stop();
    worker = await startWorkerProcess(env.taskQueue, split);
    const helper = await startWorkerProcess(env.taskQueue, split, ['--helper', labAzure().location]);
    try {
      assert.match(helper.output(), /helper appliance worker \(westeurope\) polling task queue/);
      assert.doesNotMatch(helper.output(), /worker polling task queue/, 'the helper process serves only the helper queue');
      const vmName = `t-hlp-${Date.now().toString(36)}`;
      const handle = await startAzureRestore(env.client, { restorePointId: env.demo['demo-linux'], vmName }, { taskQueue: env.taskQueue });
      const result = await handle.result();
      const events = (await handle.fetchHistory()).events ?? [];
      const prep = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'prepareGuestOnHelper')!;
      const started = events.find((e) => String(e.activityTaskStartedEventAttributes?.scheduledEventId ?? '') === String(prep.eventId));
      assert.match(
        started?.activityTaskStartedEventAttributes?.identity ?? '',
        new RegExp(`^${helper.child.pid}@`),
        'prepared by the helper process',
      );
      const upload = events.find((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'uploadVhd')!;
      const uploadStarted = events.find(
        (e) => String(e.activityTaskStartedEventAttributes?.scheduledEventId ?? '') === String(upload.eventId),
      );
      assert.match(
        uploadStarted?.activityTaskStartedEventAttributes?.identity ?? '',
        new RegExp(`^${worker.child.pid}@`),
        'uploaded by the main worker',
      );
      // What the helper process reported changing is on the managed OS disk.
      await labArm().compute.virtualMachines.deallocate(labAzure().resourceGroup, vmName);
      const osd = path.join(tmp, `${vmName}-osdisk.img`);
      await downloadManagedDisk(labArm(), result.disks[0].managedDiskId, osd);
      const root = (await readPartitionTable(osd)).partitions.find((p) => p.type === 'linux')!;
      await assertLinuxChangesOnDisk(osd, [root.startBytes], result.guestChanges);
      assert.match((await readGuestFile(osd, root.startBytes, '/etc/default/grub'))!, /console=ttyS0/);
    } finally {
      await helper.stop();
      await worker.stop();
      worker = await startWorkerProcess(env.taskQueue, {
        VMRESTORE_AZURE_PROXY_IDLE_SECONDS: String(PROXY_IDLE_SECONDS),
        VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1',
      });
    }
  });

  it('a restore naming the Azure proxy uploads on the proxy worker (worker --azure-proxy), waiting for it while it is not running', async () => {
    // A queue of its own, so no earlier poller of the proxy queue (the lab worker's embedded one) is remembered.
    const queue = `${env.taskQueue}-azpx`;
    const proxyQueue = `${queue}-azure-proxy-lab-azure-proxy`;
    const split = {
      VMRESTORE_LAB_AZURE_PROXY_WORKER: 'separate',
      VMRESTORE_AZURE_PROXY_IDLE_SECONDS: String(PROXY_IDLE_SECONDS),
      VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1',
    };
    const control = await startWorkerProcess(queue, split);
    let proxyWorker: WorkerProcess | undefined;
    try {
      assert.doesNotMatch(control.output(), /Azure proxy worker/, 'the control worker does not serve the proxy queue');
      const a = labAzure();
      const rpId = env.demo['demo-thick'];
      const vmName = `t-azpx-${Date.now().toString(36)}`;
      const handle = await startAzureRestore(env.client, { restorePointId: rpId, vmName, proxy: 'lab-azure-proxy' }, { taskQueue: queue });
      // With no worker in the proxy, the restore says so and waits; nothing is uploaded elsewhere meanwhile.
      const phase = async () => {
        const p = await handle.query(progressQuery);
        return { phase: p.phase as string, message: p.message };
      };
      let progress = await phase();
      for (const deadline = Date.now() + 120_000; progress.phase !== 'waiting-for-proxy' && Date.now() < deadline; ) {
        await new Promise((r) => setTimeout(r, 250));
        progress = await phase();
      }
      assert.equal(progress.phase, 'waiting-for-proxy', `phase ${progress.phase}: ${progress.message}`);
      assert.match(progress.message ?? '', new RegExp(`task queue '${proxyQueue}'`));
      await new Promise((r) => setTimeout(r, 3000));
      assert.equal((await phase()).phase, 'waiting-for-proxy', 'still waiting');
      const proxyView = await labArm().compute.virtualMachines.instanceView(a.resourceGroup, a.proxyVmName);
      assert.ok(
        proxyView.statuses?.some((x) => x.code === 'PowerState/running'),
        'the lease powered the proxy on',
      );
      const early = (await handle.fetchHistory()).events ?? [];
      assert.ok(!early.some((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'uploadVhd'), 'no upload scheduled yet');

      proxyWorker = await startWorkerProcess(queue, split, ['--azure-proxy', 'lab-azure-proxy']);
      assert.match(proxyWorker.output(), new RegExp(`Azure proxy worker \\(lab-azure-proxy\\) polling task queue '${proxyQueue}'`));
      assert.doesNotMatch(proxyWorker.output(), /^worker polling task queue/m, 'the proxy process serves only its queue');
      const result = await handle.result();
      const identity = new RegExp(`^${proxyWorker.child.pid}@.+/vmrestore-azure-proxy-lab-azure-proxy$`);
      const events = (await handle.fetchHistory()).events ?? [];
      const uploads = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'uploadVhd');
      assert.equal(uploads.length, 2, 'one upload per disk');
      for (const u of uploads) {
        assert.equal(u.activityTaskScheduledEventAttributes!.taskQueue?.name, proxyQueue, 'scheduled on the proxy queue');
        const started = events.filter((e) => String(e.activityTaskStartedEventAttributes?.scheduledEventId ?? '') === String(u.eventId));
        assert.ok(started.length > 0);
        for (const st of started)
          assert.match(st.activityTaskStartedEventAttributes?.identity ?? '', identity, 'started by the proxy worker');
      }
      for (const d of result.disks) {
        assert.equal(d.uploadedBy.taskQueue, proxyQueue);
        assert.equal(d.uploadedBy.proxy, 'lab-azure-proxy');
        assert.match(d.uploadedBy.workerIdentity, identity);
      }
      // What the proxy uploaded is what the managed disks were made of: the data disk is the backup byte for byte.
      await labArm().compute.virtualMachines.deallocate(a.resourceGroup, vmName);
      const managedData = path.join(tmp, `${vmName}-datadisk1.img`);
      await downloadManagedDisk(labArm(), result.disks[1].managedDiskId, managedData);
      assert.equal(await diskDigest(managedData), await backedUpDiskDigest(env.config.repository.path, rpId, 1));
      const osBlob = await checkVhd(
        result.disks[0].blobUrl,
        (await getRestorePoint(env.config.repository.path, rpId)).vm.disks[0].capacityBytes,
      );
      assert.equal(await diskDigest(osBlob.raw), await backedUpDiskDigest(env.config.repository.path, rpId, 0), 'OS disk VHD');
      // Released after the transfer, the proxy goes off once its idle timeout has passed.
      const lease = env.client.workflow.getHandle(leaseWorkflowId({ kind: 'proxy', name: 'lab-azure-proxy' }, queue));
      let state = await lease.query(leaseStateQuery);
      for (const deadline = Date.now() + (PROXY_IDLE_SECONDS + 30) * 1000; state.poweredOn && Date.now() < deadline; ) {
        await new Promise((r) => setTimeout(r, 500));
        state = await lease.query(leaseStateQuery);
      }
      assert.equal(state.poweredOn, false, 'proxy powered off after its idle timeout');
      assert.equal(state.powerOffs, 1);
      const after = await labArm().compute.virtualMachines.instanceView(a.resourceGroup, a.proxyVmName);
      assert.ok(
        after.statuses?.some((x) => x.code === 'PowerState/deallocated'),
        'proxy VM deallocated',
      );
      await lease.terminate('test done');
    } finally {
      await proxyWorker?.stop();
      await control.stop();
    }
  });

  it('restores a UEFI Linux VM as Generation 2 on request', async () => {
    const restorePointId = await importSmallLinuxVm(env.config.repository.path, tmp, 'uefi-linux', {
      firmware: 'efi',
      image: {
        sizeBytes: 256 * MiB,
        scheme: 'gpt',
        hostname: 'uefi',
        usedMiB: 8,
        // A guest preparation warning must reach the restore result and `status --json`.
        customize: async (root) => {
          const rules = path.join(root, 'etc/ufw/user6.rules');
          writeFileSync(rules, readFileSync(rules, 'utf8').replace('### END RULES ###\n', ''));
        },
      },
    });
    const vmName = `t-gen2-${Date.now().toString(36)}`;
    const handle = await startAzureRestore(env.client, { restorePointId, vmName, generation: 2 }, { taskQueue: env.taskQueue });
    const result = await handle.result();
    assert.equal(result.generation, 2);
    const ufwWarning = '/etc/ufw/user6.rules: ufw rules file has no "### END RULES ###" marker; SSH not opened';
    assert.deepEqual(result.guestWarnings, [ufwWarning]);
    const status = await getRestoreStatus(env.client, handle.workflowId);
    assert.deepEqual((status.result as AzureRestoreResult).guestWarnings, [ufwWarning], 'status --json shows the warning');
    const { compute } = labArm();
    const a = labAzure();
    assert.equal((await compute.virtualMachines.instanceView(a.resourceGroup, vmName)).hyperVGeneration, 'V2');
    const disk = await compute.disks.get(a.resourceGroup, `${vmName}-osdisk`);
    assert.equal(disk.hyperVGeneration, 'V2');
    assert.equal(disk.osType, 'Linux');
    await compute.virtualMachines.deallocate(a.resourceGroup, vmName);
    const osd = path.join(tmp, `${vmName}-osdisk.img`);
    await downloadManagedDisk(labArm(), result.disks[0].managedDiskId, osd);
    const table = await readPartitionTable(osd);
    assert.equal(table.scheme, 'gpt', 'Generation 2 keeps UEFI: no boot conversion');
    assert.ok(!result.guestChanges.some((c) => /MBR|BIOS/.test(c.description)), 'no boot conversion changes');
    const root = table.partitions.find((p) => p.type === 'linux')!;
    assert.match((await readGuestFile(osd, root.startBytes, '/etc/default/grub'))!, /console=ttyS0/);
    await assertLinuxChangesOnDisk(osd, [root.startBytes], result.guestChanges);
  });

  it('skipGuestPreparation (a test switch) restores the disks untouched: no changes, a warning, the managed OS disk is the backup', async () => {
    const restorePointId = await importSmallLinuxVm(env.config.repository.path, tmp, 'unprepared-linux');
    const vmName = `t-raw-${Date.now().toString(36)}`;
    const handle = await startAzureRestore(
      env.client,
      { restorePointId, vmName, generation: 1, skipGuestPreparation: true },
      { taskQueue: env.taskQueue },
    );
    const result = await handle.result();
    assert.deepEqual(result.guestChanges, []);
    assert.match(result.guestWarnings.join('\n'), /skipped \(test switch skipGuestPreparation\)/);
    const { compute } = labArm();
    await compute.virtualMachines.deallocate(labAzure().resourceGroup, vmName);
    const osd = path.join(tmp, `${vmName}-osdisk.img`);
    await downloadManagedDisk(labArm(), result.disks[0].managedDiskId, osd);
    assert.equal(await diskDigest(osd), await backedUpDiskDigest(env.config.repository.path, restorePointId, 0), 'the backed-up bytes');
  });

  it('restores a Windows VM: registry changes in every ControlSet, agent staged, VM running with the agent ready', async () => {
    const rpId = env.demo['demo-windows'];
    const rp = await getRestorePoint(env.config.repository.path, rpId);
    const vmName = `twin${Date.now().toString(36).slice(-6)}`;
    const result = await restore({ restorePointId: rpId, vmName });
    assert.equal(result.osType, 'Windows');
    assert.equal(result.agentInstalled, true);
    const osd = await checkVhd(result.disks[0].blobUrl, rp.vm.disks[0].capacityBytes);
    for (const cs of ['ControlSet001', 'ControlSet002']) {
      assert.equal(
        await readHiveValueFromDisk(osd.raw, 'SYSTEM', `${cs}\\Control\\Terminal Server`, 'fDenyTSConnections'),
        '0',
        `${cs} RDP on`,
      );
      assert.equal(
        await readHiveValueFromDisk(osd.raw, 'SYSTEM', `${cs}\\Services\\partmgr\\Parameters`, 'SanPolicy'),
        '1',
        `${cs} SanPolicy OnlineAll`,
      );
      assert.equal(await readHiveValueFromDisk(osd.raw, 'SYSTEM', `${cs}\\Services\\storvsc`, 'Start'), '0', `${cs} storvsc boot start`);
    }
    const runOnce = await readHiveValueFromDisk(osd.raw, 'SOFTWARE', 'Microsoft\\Windows\\CurrentVersion\\RunOnce', 'AzureVmAgent');
    assert.match(runOnce ?? '', /msiexec/i);
    // Every registry value and file the restore reported is on the uploaded VHD the managed disk was imported from.
    const checked = await assertWindowsChangesOnDisk(osd.raw, result.guestChanges);
    assert.ok(checked.length >= 10, `changes checked on the disk: ${checked.join(', ')}`);
    const installer = env.config.azure!.windowsAgentInstaller!;
    const msi = await readWindowsFileFromDisk(osd.raw, 'Windows/AzureAgent/WindowsAzureVmAgent.msi');
    assert.ok(msi && msi.equals(readFileSync(installer.path)), 'the configured installer is staged byte-exact');
    assert.ok(!result.guestWarnings.some((w) => /agent/i.test(w)), result.guestWarnings.join('\n'));
    const { compute } = labArm();
    const disk = await compute.disks.get(labAzure().resourceGroup, `${vmName}-osdisk`);
    assert.equal(disk.osType, 'Windows');
    const agent = (await compute.virtualMachines.instanceView(labAzure().resourceGroup, vmName)).vmAgent;
    assert.equal(agent?.statuses?.[0]?.displayStatus, 'Ready');
    assert.equal(agent?.statuses?.[0]?.code, 'ProvisioningState/succeeded');
  });

  it('restores a Windows VM without an agent installer configured: warns, stages nothing, agentInstalled false, agent Not Ready', async () => {
    const queue = `${env.taskQueue}-noagent`;
    const noAgent = await startWorkerProcess(queue, {
      VMRESTORE_AZURE_WINDOWS_AGENT_INSTALLER: 'none',
      VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1',
    });
    try {
      const rpId = env.demo['demo-windows'];
      const rp = await getRestorePoint(env.config.repository.path, rpId);
      const vmName = `tnoa${Date.now().toString(36).slice(-6)}`;
      const handle = await startAzureRestore(env.client, { restorePointId: rpId, vmName }, { taskQueue: queue });
      const result = await handle.result();
      finished.push(handle.workflowId);
      assert.equal(result.osType, 'Windows');
      assert.equal(result.agentInstalled, false);
      assert.ok(
        result.guestWarnings.includes('no Azure VM agent installer configured (azure.windowsAgentInstaller); the agent is not installed'),
        result.guestWarnings.join('\n'),
      );
      assert.ok(!result.guestChanges.some((c) => /AzureAgent|RunOnce/.test(c.path)), 'no agent change in the change list');
      const history = await handle.fetchHistory();
      const scheduled = (history.events ?? []).map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name).filter(Boolean);
      assert.ok(!scheduled.includes('confirmAgentInstalled'), `no agent confirmation: ${scheduled.join(', ')}`);
      // The disk the VM was made from carries neither the installer nor the RunOnce entry, but the rest of the preparation.
      const osd = await checkVhd(result.disks[0].blobUrl, rp.vm.disks[0].capacityBytes);
      assert.equal(await readWindowsFileFromDisk(osd.raw, 'Windows/AzureAgent/WindowsAzureVmAgent.msi'), null);
      assert.equal(await readHiveValueFromDisk(osd.raw, 'SOFTWARE', 'Microsoft\\Windows\\CurrentVersion\\RunOnce', 'AzureVmAgent'), null);
      assert.equal(await readHiveValueFromDisk(osd.raw, 'SYSTEM', 'ControlSet001\\Services\\storvsc', 'Start'), '0');
      await assertWindowsChangesOnDisk(osd.raw, result.guestChanges);
      const { compute } = labArm();
      const view = await compute.virtualMachines.instanceView(labAzure().resourceGroup, vmName);
      assert.equal(view.statuses?.find((x) => x.code?.startsWith('PowerState/'))?.code, 'PowerState/running');
      assert.deepEqual(
        view.vmAgent?.statuses?.map((x) => [x.code, x.displayStatus, x.message]),
        [['ProvisioningState/Unavailable', 'Not Ready', 'VM Agent is unresponsive.']],
      );
    } finally {
      await noAgent.stop();
    }
  });

  it('a parent workflow restores to Azure as a child; search attributes, progress query and replay', async () => {
    const vmName = `tchild${Date.now().toString(36).slice(-6)}`;
    const parentId = `restore-plan-azure-${Date.now().toString(36)}`;
    const plan = await env.client.workflow.execute(restorePlan, {
      taskQueue: env.taskQueue,
      workflowId: parentId,
      args: [{ groups: [[{ target: 'azure', restorePointId: env.demo['demo-windows'], vmName }]] }],
    });
    assert.equal(plan.results.length, 1);
    const child = plan.results[0];
    assert.equal(child.error, undefined, `child failed: ${child.error}`);
    assert.equal(child.target, 'azure');
    const result = child.result as AzureRestoreResult;
    assert.equal(result.vmName, vmName);
    assert.equal(result.osType, 'Windows');
    const parentHistory = await env.client.workflow.getHandle(parentId).fetchHistory();
    assert.ok(parentHistory.events!.some((e) => e.childWorkflowExecutionCompletedEventAttributes));

    const handle = env.client.workflow.getHandle(child.workflowId);
    const progress = await handle.query(progressQuery);
    assert.equal(progress.kind, 'azure');
    assert.equal(progress.phase, 'completed');
    assert.ok(progress.disks.every((d) => d.state === 'done' && d.bytesDone === d.bytesTotal));
    const desc = await handle.describe();
    assert.equal(desc.typedSearchAttributes.get(RestoreKind), 'azure');
    assert.equal(desc.typedSearchAttributes.get(RestoreVm), vmName);
    assert.equal(desc.typedSearchAttributes.get(RestorePhaseKey), 'completed');
    // Visibility finds it by those attributes, as the Web UI's filter would.
    let found: string[] = [];
    for (let i = 0; i < 40 && found.length === 0; i++) {
      found = [];
      for await (const w of env.client.workflow.list({ query: `RestoreKind = 'azure' AND RestoreVm = '${vmName}'` }))
        found.push(w.workflowId);
      if (found.length === 0) await new Promise((r) => setTimeout(r, 250));
    }
    assert.deepEqual(found, [child.workflowId]);

    finished.push(child.workflowId, parentId);
    const replayed = await replayFinished(env.client, finished);
    assert.equal(replayed, finished.length);
  });

  it('two overlapping restores with one proxy power it on once and off once, after the idle timeout', async () => {
    const a = labAzure();
    const before = (await armLog()).length;
    const t0 = Date.now();
    const [r1, r2] = await Promise.all([
      restore({ restorePointId: env.demo['demo-thick'], vmName: `t-px1-${Date.now().toString(36)}`, proxy: 'lab-azure-proxy' }),
      restore({ restorePointId: env.demo['demo-thick'], vmName: `t-px2-${Date.now().toString(36)}`, proxy: 'lab-azure-proxy' }),
    ]);
    const lastRelease = Date.now();
    assert.ok(r1.vmId && r2.vmId);
    // The lab worker serves the proxy's queue with a worker of its own, as the proxy VM's worker would.
    for (const d of [...r1.disks, ...r2.disks]) {
      assert.equal(d.uploadedBy.taskQueue, `${env.taskQueue}-azure-proxy-lab-azure-proxy`);
      assert.match(d.uploadedBy.workerIdentity, new RegExp(`^${worker.child.pid}@.+/vmrestore-azure-proxy-lab-azure-proxy$`));
    }
    const handle = env.client.workflow.getHandle(leaseWorkflowId({ kind: 'proxy', name: 'lab-azure-proxy' }, env.taskQueue));
    const mid = await handle.query(leaseStateQuery);
    assert.equal(mid.holders.length, 0, 'both restores released the proxy');
    assert.equal(mid.poweredOn, true, 'still on during the idle timeout');
    const deadline = Date.now() + (PROXY_IDLE_SECONDS + 20) * 1000;
    let state = mid;
    while (state.poweredOn && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 500));
      state = await handle.query(leaseStateQuery);
    }
    assert.equal(state.poweredOn, false, 'powered off after the idle timeout');
    const log = (await armLog()).slice(before);
    // Every ARM call the workers made was signed in as the lab's app registration.
    assert.ok(log.length > 0);
    assert.deepEqual([...new Set(log.map((e) => e.principal))], [a.clientId]);
    const proxyPath = new RegExp(`/virtualMachines/${a.proxyVmName}/(start|deallocate)$`, 'i');
    const ops = log.filter((e) => e.method === 'POST' && proxyPath.test(e.path) && e.status < 300);
    const starts = ops.filter((e) => /start$/.test(e.path));
    const stops = ops.filter((e) => /deallocate$/.test(e.path));
    assert.equal(starts.length, 1, `one power-on (saw ${starts.length})`);
    assert.equal(stops.length, 1, `one power-off (saw ${stops.length})`);
    const offAt = Date.parse(stops[0].time);
    // The last release as the lease saw it (its update's acceptance), not when the restores returned: a
    // restore releases the proxy before it registers its VM.
    const leaseEvents = (await handle.fetchHistory()).events ?? [];
    const releases = leaseEvents
      .filter((e) => e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name === 'release')
      .map((e) => Number(e.eventTime!.seconds) * 1000 + Math.floor((e.eventTime!.nanos ?? 0) / 1e6));
    assert.ok(releases.length >= 2, `the lease saw both releases (saw ${releases.length})`);
    const leaseRelease = Math.max(...releases);
    assert.ok(leaseRelease <= lastRelease, 'released before both restores returned');
    assert.ok(offAt >= leaseRelease + PROXY_IDLE_SECONDS * 1000 - 1500, `power-off ${offAt - leaseRelease} ms after the last release`);
    assert.ok(Date.parse(starts[0].time) >= t0 - 1000);
  });

  it('the helper lease hands out data-disk slots: a restore waits for room instead of overflowing the helper', async () => {
    const a = labAzure();
    const target = {
      kind: 'helper' as const,
      name: `slots-${Date.now().toString(36)}`,
      resourceGroup: a.resourceGroup,
      vmName: a.helperVmName,
      idleTimeoutMs: 1000,
      slots: 3,
    };
    const workflowId = leaseWorkflowId(target, env.taskQueue);
    const reserve = (holder: string, slots: number) =>
      env.client.workflow.executeUpdateWithStart(acquireLease, {
        args: [holder, { slots, powerOn: false }],
        startWorkflowOperation: new WithStartWorkflowOperation(resourceLease, {
          workflowId,
          taskQueue: env.taskQueue,
          args: [{ target, holders: [], poweredOn: false, powerOns: 0, powerOffs: 0 }],
          workflowIdConflictPolicy: 'USE_EXISTING',
        }),
      });
    const handle = env.client.workflow.getHandle(workflowId);
    await reserve('restore-a', 2);
    let bDone = false;
    const b = reserve('restore-b', 2).then(() => (bDone = true));
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(bDone, false, 'restore-b waits: 2 + 2 slots exceed the 3 the helper has');
    assert.deepEqual((await handle.query(leaseStateQuery)).reserved, { 'restore-a': 2 });
    await handle.executeUpdate(releaseLease, { args: ['restore-a'] });
    await b;
    assert.deepEqual((await handle.query(leaseStateQuery)).reserved, { 'restore-b': 2 });
    await assert.rejects(reserve('restore-c', 4), (err: unknown) => /needs 4 data-disk slots/.test(failureMessage(err)));
    await handle.executeUpdate(releaseLease, { args: ['restore-b'] });
    const end = await handle.query(leaseStateQuery);
    assert.deepEqual(end.holders, []);
    assert.equal(end.powerOns, 0, 'reserving alone never starts the VM');
    await handle.terminate('test done');

    // A lease workflow under our id that no worker of this queue serves is named, not waited on forever.
    const proxyLeaseId = leaseWorkflowId({ kind: 'proxy', name: 'lab-azure-proxy' }, env.taskQueue);
    await env.client.workflow
      .getHandle(proxyLeaseId)
      .terminate('test setup')
      .catch(() => undefined);
    const orphan = await env.client.workflow.start(resourceLease, {
      workflowId: proxyLeaseId,
      taskQueue: 'no-worker-serves-this',
      args: [{ target: { ...target, kind: 'proxy', name: 'lab-azure-proxy' }, holders: [], poweredOn: false, powerOns: 0, powerOffs: 0 }],
    });
    const h = await startAzureRestore(
      env.client,
      { restorePointId: env.demo['demo-thick'], vmName: `t-orphan-${Date.now().toString(36)}`, proxy: 'lab-azure-proxy' },
      { taskQueue: env.taskQueue },
    );
    assert.match(failureMessage(await h.result().catch((e: unknown) => e)), /runs on task queue 'no-worker-serves-this'/);
    await orphan.terminate('test done');
  });

  it('completes despite injected throttling and transient 5xx', async () => {
    await setFaults([
      { kind: 'throttle', method: 'PUT', pathPattern: '/disks/', count: 2, retryAfterSeconds: 1 },
      { kind: 'transient', method: 'PUT', pathPattern: '/networkInterfaces/', status: 503, count: 2 },
      { kind: 'throttle', method: 'PUT', pathPattern: '/virtualMachines/', count: 1, retryAfterSeconds: 1 },
    ]);
    try {
      const result = await restore({ restorePointId: env.demo['demo-thick'], vmName: `t-faults-${Date.now().toString(36)}` });
      assert.ok(result.vmId);
      const log = await armLog();
      assert.ok(
        log.some((e) => e.status === 429),
        'throttling was injected',
      );
      assert.ok(
        log.some((e) => e.status === 503),
        'a transient 503 was injected',
      );
    } finally {
      await clearFaults();
    }
  });

  it('a quota error at VM create fails clearly and leaves no blobs, disks or NIC behind', async () => {
    const a = labAzure();
    const vmName = `t-quota-${Date.now().toString(36)}`;
    await setFaults([{ kind: 'quota', method: 'PUT', pathPattern: `/virtualMachines/${vmName}$` }]);
    try {
      const handle = await startAzureRestore(env.client, { restorePointId: env.demo['demo-thick'], vmName }, { taskQueue: env.taskQueue });
      const err = await handle.result().then(
        () => assert.fail('restore should fail'),
        (e: unknown) => e,
      );
      assert.match(failureMessage(err), /quota/i);
      const { compute, network } = labArm();
      for (const d of [`${vmName}-osdisk`, `${vmName}-datadisk1`]) {
        await assert.rejects(
          compute.disks.get(a.resourceGroup, d),
          (e: { statusCode?: number }) => e.statusCode === 404,
          `disk ${d} removed`,
        );
      }
      await assert.rejects(
        network.networkInterfaces.get(a.resourceGroup, `${vmName}-nic`),
        (e: { statusCode?: number }) => e.statusCode === 404,
        'NIC removed',
      );
      // Blob names start with the restore id, `<workflow id>@<run id>` made name-safe.
      const prefix = handle.workflowId.replace(/[^A-Za-z0-9-]/g, '-').toLowerCase() + '-';
      const left = [];
      for await (const b of labContainer().listBlobsFlat({ prefix })) left.push(b.name);
      assert.deepEqual(left, [], 'VHD blobs removed');
    } finally {
      await clearFaults();
    }
  });

  it('rejects bad input before anything is created', async () => {
    const rpId = env.demo['demo-thick'];
    const cases: Array<[Partial<AzureRestoreRequest>, RegExp]> = [
      [{ vmName: 'bad name!' }, /Azure VM name 'bad name!' is invalid/],
      [{ vmName: '-lead-ok-trail-' }, /must not end with/],
      [{ vmName: 'x'.repeat(65) }, /at most 64/],
      [{ vmName: `t-loc-${Date.now().toString(36)}`, location: 'marsnorth' }, /location 'marsnorth' is not available/],
      [
        { vmName: `t-sub-${Date.now().toString(36)}`, subnetId: labAzure().subnetId.replace(/default$/, 'nope') },
        /subnet 'nope' .* not found/,
      ],
      [{ vmName: `t-gen-${Date.now().toString(36)}`, generation: 2 }, /BIOS; a Generation 2 VM/],
      [{ vmName: `t-skip-${Date.now().toString(36)}`, skipGuestPreparation: 'yes' as unknown as boolean }, /skipGuestPreparation/],
    ];
    for (const [req, pattern] of cases) {
      const handle = await startAzureRestore(
        env.client,
        { restorePointId: rpId, vmName: 'x', ...req },
        { taskQueue: env.taskQueue, workflowId: `restore-azure-invalid-${Math.random().toString(36).slice(2)}` },
      );
      const err = await handle.result().then(
        () => assert.fail(`should fail: ${JSON.stringify(req)}`),
        (e: unknown) => e,
      );
      assert.match(failureMessage(err), pattern);
      const history = await handle.fetchHistory();
      const scheduled = history
        .events!.filter((e) => e.activityTaskScheduledEventAttributes)
        .map((e) => e.activityTaskScheduledEventAttributes!.activityType!.name);
      assert.deepEqual(scheduled, ['prepareAzureRestore'], `only initialization ran for ${JSON.stringify(req)}`);
    }
    // A Windows name over 15 characters.
    const h = await startAzureRestore(
      env.client,
      { restorePointId: env.demo['demo-windows'], vmName: 'windows-name-too-long' },
      { taskQueue: env.taskQueue },
    );
    assert.match(failureMessage(await h.result().catch((e: unknown) => e)), /at most 15/);
    // A disk over Azure's limits (a Gen1 OS disk above 2 TiB).
    const huge = writeZeroRestorePoint('huge', [3 * 1024 * 1024 * MiB]);
    const hh = await startAzureRestore(
      env.client,
      { restorePointId: huge.id, vmName: `t-huge-${Date.now().toString(36)}` },
      { taskQueue: env.taskQueue },
    );
    assert.match(failureMessage(await hh.result().catch((e: unknown) => e)), /TiB/);
    huge.remove();
    // More data disks than the VM size takes, and more disks than the helper appliance has slots for.
    const five = writeZeroRestorePoint('five-disks', new Array(5).fill(64 * MiB));
    const small = await startAzureRestore(
      env.client,
      { restorePointId: five.id, vmName: `t-five-${Date.now().toString(36)}`, vmSize: 'Standard_B1s' },
      { taskQueue: env.taskQueue },
    );
    assert.match(failureMessage(await small.result().catch((e: unknown) => e)), /has 4 data disks; size 'Standard_B1s' allows 2/);
    const helperFull = await startAzureRestore(
      env.client,
      { restorePointId: five.id, vmName: `t-five-${Date.now().toString(36)}`, vmSize: 'Standard_D2s_v3' },
      { taskQueue: env.taskQueue },
    );
    assert.match(
      failureMessage(await helperFull.result().catch((e: unknown) => e)),
      /has 5 disks; helper appliance .* takes at most 4 data disks/,
    );
    five.remove();
  });

  it('a corrupt backup chunk fails the restore at once, naming the chunk, and leaves no blob behind', async () => {
    const {
      restorePointId,
      hash,
      chunkFile: file,
    } = await importVmWithCorruptChunk(env.config.repository.path, path.join(tmp, 'corrupt-vm'));
    const handle = await startAzureRestore(
      env.client,
      { restorePointId, vmName: `t-corrupt-${Date.now().toString(36)}` },
      { taskQueue: env.taskQueue },
    );
    const message = failureMessage(await handle.result().catch((e: unknown) => e));
    assert.match(message, new RegExp(`disk 1 at offset \\d+: chunk ${hash} is corrupt`));
    const events = (await handle.fetchHistory()).events ?? [];
    const uploads = events.filter(
      (e) => e.activityTaskStartedEventAttributes && e.activityTaskStartedEventAttributes.attempt !== undefined,
    );
    assert.ok(
      uploads.every((e) => (e.activityTaskStartedEventAttributes!.attempt ?? 1) === 1),
      'corruption is not retried',
    );
    // The good disk's upload had stopped (cancelled or finished) before compensation deleted any blob.
    const scheduled = (name: string) =>
      events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === name).map((e) => Number(e.eventId));
    const uploadIds = scheduled('uploadVhd');
    const firstDelete = Math.min(...scheduled('deleteVhdBlob'));
    assert.equal(uploadIds.length, 2, 'both disks were uploading');
    for (const id of uploadIds) {
      const closed = events.find((e) =>
        [e.activityTaskCompletedEventAttributes, e.activityTaskFailedEventAttributes, e.activityTaskCanceledEventAttributes].some(
          (a) => a && Number(a.scheduledEventId) === id,
        ),
      );
      assert.ok(
        closed && Number(closed.eventId) < firstDelete,
        `upload ${id} closed (event ${closed?.eventId}) before the first blob delete (${firstDelete})`,
      );
    }
    const prefix = `${handle.workflowId.replace(/[^A-Za-z0-9-]/g, '-').toLowerCase()}-`;
    const left: string[] = [];
    for await (const b of labContainer().listBlobsFlat({ prefix })) left.push(b.name);
    assert.deepEqual(left, [], 'uploaded VHDs were deleted');
    rmSync(file);
  });

  it('survives SIGKILL of the worker mid-upload: the blob is correct and re-sent bytes stay within the in-flight window', async () => {
    const dir = path.join(tmp, 'crash-vm');
    mkdirSync(dir, { recursive: true });
    await buildLinuxDiskImage(path.join(dir, 'disk0.img'), {
      sizeBytes: 256 * MiB,
      scheme: 'mbr',
      hostname: 'crash',
      networkStyle: 'interfaces',
      firewall: 'iptables',
      usedMiB: 8,
    });
    buildDataDiskImage(path.join(dir, 'disk1.img'), 512 * MiB, [[0, 512 * MiB]], 'azure-crash');
    const restorePointId = await importTestVm(env.config.repository.path, dir, {
      name: 'azure-crash',
      disks: [
        { path: 'disk0.img', provisioning: 'thin' },
        { path: 'disk1.img', provisioning: 'thick' },
      ],
    });
    await worker.stop();
    const first = await startWorkerProcess(env.taskQueue, { VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1' });
    const handle = await startAzureRestore(
      env.client,
      { restorePointId, vmName: `t-azcrash-${Date.now().toString(36)}` },
      { taskQueue: env.taskQueue },
    );
    let seen: UploadCheckpoint | undefined;
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      const desc = await handle.describe();
      const pa = desc.raw.pendingActivities?.find((x) => x.activityType?.name === 'uploadVhd' && x.heartbeatDetails?.payloads?.length);
      const cp = pa ? (defaultPayloadConverter.fromPayload(pa.heartbeatDetails!.payloads![0]) as UploadCheckpoint) : undefined;
      if (cp && cp.diskIndex === 1 && cp.offset >= 128 * MiB) {
        seen = cp;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(seen, 'upload of the 512 MiB disk under way');
    await first.kill();
    // The highest page in the blob at the moment of the crash bounds what the first attempt sent.
    const restoreId = `${handle.workflowId}@${(await handle.describe()).runId}`;
    const blob = labContainer().getPageBlobClient(`${restoreId.replace(/[^A-Za-z0-9-]/g, '-').toLowerCase()}/disk1.vhd`);
    let extentAtCrash = 0;
    for await (const r of blob.listPageRanges()) extentAtCrash = Math.max(extentAtCrash, r.end + 1);
    worker = await startWorkerProcess(env.taskQueue, {
      VMRESTORE_AZURE_PROXY_IDLE_SECONDS: String(PROXY_IDLE_SECONDS),
      VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1',
    });
    const result = await handle.result();
    const disk = result.disks[1];
    const window = 8 * 4 * MiB;
    // What the new worker really sent, counted by the kernel (its write system calls since it started),
    // not what it reports: the rest of the disk, what it sent again, and the small rest of its work (what
    // remained of the 8 MiB of disk 0, the guest's fixes on the helper, HTTP headers, Temporal calls).
    const sent = processTreeIo(worker.child.pid!).wchar;
    const rest = 512 * MiB - extentAtCrash;
    const resent = Math.max(0, sent - rest);
    const other = 16 * MiB;
    console.log(
      `azure crash figures: blob extent at crash ${(extentAtCrash / MiB).toFixed(0)} MiB, the new worker sent ${(sent / MiB).toFixed(1)} MiB ` +
        `(the rest ${(rest / MiB).toFixed(1)} MiB + ${(resent / MiB).toFixed(1)} MiB; it reports resuming at ${(disk.resumedFromOffset / MiB).toFixed(0)} MiB), ` +
        `in-flight window ${window / MiB} MiB, heartbeat seen at ${(seen.offset / MiB).toFixed(0)} MiB`,
    );
    assert.ok(sent >= rest, `the new worker sent at least the part missing at the crash (${sent} >= ${rest})`);
    // The uploader never writes past the checkpoint stored in the blob + the window, and a retry starts
    // at least from that checkpoint, however late the last heartbeat reached the server.
    assert.ok(
      resent <= window + other && resent < extentAtCrash,
      `sent ${resent} bytes beyond the missing part <= ${window} + ${other}: resumed, not restarted (${extentAtCrash} in the blob at the crash)`,
    );
    const data = await checkVhd(disk.blobUrl, 512 * MiB);
    assert.equal(await diskDigest(data.raw), await backedUpDiskDigest(env.config.repository.path, restorePointId, 1));
  });
});
