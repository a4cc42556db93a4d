import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { AzureRestoreRequest, AzureRestoreResult } from '../../src/domain/azure';
import { run } from '../../src/guest/exec';
import { readPartitionTable } from '../../src/guest/disk/partition';
import { readGuestFile } from '../../src/guest/linux/prep';
import { assertLinuxChangesOnDisk } from '../helpers/guest-changes';
import { DATA_MOUNT, DATA_MARKER, ensureGuestImage, guestVmJson, type GuestImage } from '../../src/lab/guests';
import { startAzureRestore } from '../../src/client/restore';
import { verifyBoot, type BootReport } from '../../src/verify';
import { downloadManagedDisk, labArm, labAzure } from '../helpers/azure';
import { bootCheck, explainBoot, sshIntoGuest } from '../helpers/lab-guests';
import { importTestVm, openTestEnv, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';

/**
 * The proof that an Azure restore boots: the lab's Debian 12 guests (VMware-era: static address on the
 * VMware NIC name, persistent-net rule pinned to its MAC, a data disk in fstab without nofail, by /dev/sdX
 * on the BIOS guest, no serial console) are
 * imported as restore points, restored to Azure as Generation 1 (the UEFI guest converted to BIOS), and
 * the managed disks (read through the grant-access SAS, as one would on Azure) are
 * booted under qemu (TCG) as Azure presents them: the OS disk first SCSI disk, the temporary resource disk
 * second, the data disk after, a NIC with a new MAC, DHCP on qemu's user network; a login then checks the
 * guest from inside. The negative control boots the BIOS guest's disks as they were backed up (what a
 * restore without preparation writes) on the same layout. Generation 2 (the UEFI guest under OVMF) is
 * booted by the verifier in test/e2e/verify-restore.test.ts.
 */

const BUILD_TIMEOUT = 30 * 60_000;
/** Under TCG a boot takes 30-90 s on an idle 2-core machine, several minutes on a loaded one. */
const BOOT_LIMIT_MS = 600_000;
const TEST_TIMEOUT = BOOT_LIMIT_MS + 15 * 60_000;
const MiB = 1024 * 1024;

let env: TestEnv;
let worker: WorkerProcess;
let dir: string;
let bios: GuestImage;
let uefi: GuestImage;
const restorePoints: Record<string, string> = {};
/** Time to SSH banner per case, for the summary. */
const recovery: Record<string, number | undefined> = {};

before(
  async () => {
    dir = await fsp.mkdtemp(join(tmpdir(), 'azure-boot-e2e-'));
    const built = await Promise.all([ensureGuestImage('debian12-bios'), ensureGuestImage('debian12-uefi')]);
    [bios, uefi] = built.map((b) => b.image);
    env = await openTestEnv('azboot');
    worker = await startWorkerProcess(env.taskQueue, { VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1' });
    for (const image of [bios, uefi]) {
      const vmDir = join(dir, `import-${image.name}`);
      await fsp.mkdir(vmDir, { recursive: true });
      const vm = guestVmJson(image, `azboot-${image.name}`) as unknown as Parameters<typeof importTestVm>[2];
      restorePoints[image.name] = await importTestVm(env.config.repository.path, vmDir, vm);
    }
  },
  { timeout: BUILD_TIMEOUT },
);

after(async () => {
  await worker?.stop();
  await env?.close();
  await fsp.rm(dir, { recursive: true, force: true });
});

const check = bootCheck;

/** Offsets of the disk's Linux filesystems, the root (the largest) first. */
async function linuxVolumes(image: string): Promise<number[]> {
  const parts = (await readPartitionTable(image)).partitions.filter((p) => p.type === 'linux');
  return parts.sort((a, b) => b.sizeBytes - a.sizeBytes).map((p) => p.startBytes);
}
const explain = explainBoot;

/** Disks in Azure's order, as a VM would get them. */
interface AzureDisks {
  osDisk: string;
  resourceDisk: string;
  dataDisk: string;
  /** Only for restored disks: the restore's and the managed disks' read times. */
  seconds?: { restore: number; download: number };
}

interface Restored extends AzureDisks {
  result: AzureRestoreResult;
}

/**
 * Restores the guest to Azure, deallocates the VM (a disk attached to a running VM cannot be exported)
 * and reads its managed disks into local sparse images, plus a temporary resource disk as Azure adds one.
 */
async function restoreAndFetch(image: GuestImage, vmName: string, req: Partial<AzureRestoreRequest>): Promise<Restored> {
  const started = Date.now();
  const handle = await startAzureRestore(
    env.client,
    { restorePointId: restorePoints[image.name], vmName, ...req },
    { taskQueue: env.taskQueue },
  );
  const result = await handle.result();
  const restoreSeconds = (Date.now() - started) / 1000;
  const a = labAzure();
  const arm = labArm();
  await arm.compute.virtualMachines.deallocate(a.resourceGroup, vmName);
  const work = join(dir, vmName);
  await fsp.mkdir(work, { recursive: true });
  const fetchStarted = Date.now();
  const osDisk = join(work, 'osdisk.img');
  const dataDisk = join(work, 'datadisk1.img');
  await downloadManagedDisk(arm, result.disks[0].managedDiskId, osDisk);
  await downloadManagedDisk(arm, result.disks[1].managedDiskId, dataDisk);
  const downloadSeconds = (Date.now() - fetchStarted) / 1000;
  return {
    result,
    osDisk,
    resourceDisk: await resourceDisk(work),
    dataDisk,
    seconds: { restore: restoreSeconds, download: downloadSeconds },
  };
}

/** The temporary resource disk: what Azure gives a new VM, an MBR disk with one NTFS-typed partition. */
async function resourceDisk(work: string): Promise<string> {
  const file = join(work, 'resource.img');
  const fh = await fsp.open(file, 'w');
  await fh.truncate(256 * MiB);
  await fh.close();
  await run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', file], { input: 'label: dos\nstart=2048, type=7\n' });
  return file;
}

/** The guest's own disks as they were backed up, with a temporary resource disk: nothing restored. */
async function asBackedUp(image: GuestImage, label: string): Promise<AzureDisks> {
  const work = join(dir, label);
  await fsp.mkdir(work, { recursive: true });
  // qemu boots its disks with snapshot=on: the cached guest images stay as they are.
  return {
    osDisk: image.osDisk,
    resourceDisk: await resourceDisk(work),
    dataDisk: image.dataDisk,
  };
}

/** A MAC from Azure's range: nothing in the guest knows it. */
function azureMac(n: number): string {
  return `00:0d:3a:5e:0b:${n.toString(16).padStart(2, '0')}`;
}

const GUEST_STATE = [
  'cat /sys/class/net/eth0/address',
  'ip -4 -o addr show dev eth0',
  `findmnt -n -o UUID,OPTIONS ${DATA_MOUNT}`,
  `cat ${DATA_MOUNT}/${DATA_MARKER}`,
  'cat /proc/cmdline',
].join('; ');

async function bootOnAzureLayout(
  t: TestContext,
  image: GuestImage,
  label: string,
  r: AzureDisks,
  generation: 1 | 2,
  mac: string,
  timeoutMs = BOOT_LIMIT_MS,
): Promise<{ report: BootReport; inside: string }> {
  let inside = '';
  const report = await verifyBoot({
    name: label,
    firmware: generation === 1 ? 'bios' : 'efi',
    disks: [
      { path: r.osDisk, role: 'os' },
      { path: r.resourceDisk, role: 'resource' },
      { path: r.dataDisk, role: 'data' },
    ],
    nic: { model: 'virtio-net-pci', mac },
    expect: { dhcp: true, serialConsole: true },
    timeoutMs,
    workDir: join(dir, `${label}-boot`),
    whileUp: async ({ port }) => {
      inside = await sshIntoGuest(image, port, GUEST_STATE, dir);
    },
  });
  recovery[label] = report.recoveryTimeMs;
  t.diagnostic(
    `${label}: ${r.seconds ? `restore ${r.seconds.restore.toFixed(0)} s, managed disks read ${r.seconds.download.toFixed(0)} s` : 'the backed-up disks'}; ` +
      `boot stopped by ${report.stoppedBy}, SSH banner after ${report.recoveryTimeMs === undefined ? '-' : (report.recoveryTimeMs / 1000).toFixed(1)} s (TCG)`,
  );
  return { report, inside };
}

function assertBootedOnAzure(report: BootReport, inside: string, image: GuestImage, mac: string): void {
  assert.equal(report.verdict, 'passed', explain(report));
  for (const name of ['bootLoader', 'kernelStarted', 'serialConsole', 'dhcpLease', 'sshBanner', 'noEmergencyMode'] as const) {
    assert.equal(check(report, name).status, 'passed', `${name}: ${explain(report)}`);
  }
  assert.match(report.sshBanner ?? '', /^SSH-2\.0-OpenSSH/);
  assert.ok(
    report.traffic.dhcp.some((d) => d.type === 'ack'),
    'the guest got a DHCP lease',
  );
  const lines = inside.trim().split('\n');
  assert.equal(lines[0], mac, 'eth0 is the new NIC');
  assert.match(lines[1], /inet 10\.0\.2\.15\//, 'eth0 holds the DHCP address');
  // Kernel disk names follow the order the SCSI targets answer in, which is not fixed: the mount is by UUID.
  const [uuid, options] = lines[2].split(/\s+/);
  assert.equal(uuid, image.dataPartition.fsUuid, 'the data disk is mounted by its filesystem, not by /dev/sdb1 (the resource disk)');
  assert.match(options, /rw/);
  assert.equal(lines[3], `data disk of ${image.hostname}`, 'the data disk, found by UUID on the third disk');
  assert.match(lines[4], /console=ttyS0,115200n8/);
  assert.doesNotMatch(lines[4], /rootdelay/);
}

describe('Debian guests restored to Azure boot from their managed disks', { concurrency: 2 }, () => {
  it('BIOS guest, Generation 1: DHCP lease on eth0 and SSH', { timeout: TEST_TIMEOUT }, async (t) => {
    const vmName = `azb-bios-${Date.now().toString(36)}`;
    const r = await restoreAndFetch(bios, vmName, { generation: 1 });
    // Read from the managed OS disk: what preparation changed there, not what it says it changed.
    const root = await linuxVolumes(r.osDisk);
    const ifaces = await readGuestFile(r.osDisk, root[0], '/etc/network/interfaces');
    assert.match(ifaces ?? '', /^\s*iface eth0 inet dhcp/m, `eth0 by DHCP in /etc/network/interfaces:\n${ifaces}`);
    assert.doesNotMatch(ifaces ?? '', /^\s*address\s/m, 'no static address left');
    assert.match(
      (await readGuestFile(r.osDisk, root[0], '/etc/default/grub')) ?? '',
      /net\.ifnames=0/,
      'eth0 naming on the kernel command line',
    );
    const fstab = (await readGuestFile(r.osDisk, root[0], '/etc/fstab')) ?? '';
    assert.doesNotMatch(fstab, /^\/dev\/sd/m, `no /dev/sdX mount left:\n${fstab}`);
    assert.match(fstab, /^UUID=\S+\s+\/\s/m);
    await assertLinuxChangesOnDisk(r.osDisk, root, r.result.guestChanges);
    const mac = azureMac(1);
    const { report, inside } = await bootOnAzureLayout(t, bios, 'bios-gen1', r, 1, mac);
    assertBootedOnAzure(report, inside, bios, mac);
    assert.match(check(report, 'bootLoader').detail, /SeaBIOS/);
  });

  it('UEFI guest, Generation 1 (converted to BIOS): boots under SeaBIOS, DHCP lease and SSH', { timeout: TEST_TIMEOUT }, async (t) => {
    const vmName = `azb-u2b-${Date.now().toString(36)}`;
    const r = await restoreAndFetch(uefi, vmName, {});
    assert.equal(r.result.generation, 1, 'Generation 1 is the default');
    assert.equal((await readPartitionTable(r.osDisk)).scheme, 'mbr', 'the managed OS disk was converted to MBR');
    const volumes = await linuxVolumes(r.osDisk);
    const dhcp = await readGuestFile(r.osDisk, volumes[0], '/etc/systemd/network/05-vmrestore-azure-dhcp.network');
    assert.match(dhcp ?? '(missing)', /DHCP=(yes|ipv4)/, 'DHCP for eth0 on the managed disk');
    await assertLinuxChangesOnDisk(r.osDisk, volumes, r.result.guestChanges);
    const mac = azureMac(2);
    const { report, inside } = await bootOnAzureLayout(t, uefi, 'uefi-gen1', r, 1, mac);
    assertBootedOnAzure(report, inside, uefi, mac);
    assert.match(check(report, 'bootLoader').detail, /SeaBIOS/);
  });

  it(
    'negative control: the BIOS guest as it was backed up, on the same layout, gets no DHCP lease and no SSH',
    { timeout: TEST_TIMEOUT },
    async (t) => {
      // What a restore without preparation puts on the managed OS disk is the backed-up disk, byte for byte
      // (test/e2e/azure-restore.test.ts, skipGuestPreparation): so the control boots those bytes themselves.
      const r = await asBackedUp(bios, 'bios-gen1-unprepared');
      // A quarter more than the time the prepared guest took to answer SSH on this machine (tests run two
      // at a time, so one of the prepared boots has finished by now; its DHCP lease came before its SSH
      // banner), at least 60 s: ample for the same kernel to reach its network, were it configured for it.
      const prepared = recovery['bios-gen1'] ?? recovery['uefi-gen1'];
      const limit = prepared === undefined ? 240_000 : Math.min(240_000, Math.max(60_000, 1.25 * prepared));
      t.diagnostic(`negative control boot limit ${(limit / 1000).toFixed(0)} s`);
      const { report } = await bootOnAzureLayout(t, bios, 'bios-gen1-unprepared', r, 1, azureMac(4), limit);
      assert.equal(report.verdict, 'failed', explain(report));
      assert.equal(report.stoppedBy, 'time-limit', explain(report));
      assert.ok(report.durationMs >= limit - 1000, `ran its whole limit (${report.durationMs} ms)`);
      // It booted: what fails is the network (the VMware NIC name and static address, on a foreign MAC).
      assert.equal(check(report, 'bootLoader').status, 'passed', explain(report));
      assert.equal(check(report, 'kernelStarted').status, 'passed', explain(report));
      const dhcp = check(report, 'dhcpLease');
      assert.equal(dhcp.status, 'failed', explain(report));
      assert.equal(dhcp.required, true);
      assert.match(dhcp.detail, /no frame from the guest|no DHCP request/);
      assert.equal(report.traffic.dhcp.filter((d) => d.type === 'ack').length, 0);
      assert.equal(check(report, 'sshBanner').status, 'failed');
      assert.match(check(report, 'sshBanner').detail, /time limit/);
      assert.equal(report.recoveryTimeMs, undefined);
      assert.ok(report.serialTail !== undefined, 'a failed verification carries the serial log tail');
      // No console=ttyS0 in the unprepared guest: Azure's serial console would show nothing either.
      assert.equal(check(report, 'serialConsole').status, 'failed');
    },
  );
});
