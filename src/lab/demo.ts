import { mkdirSync, writeFileSync, openSync, writeSync, closeSync, ftruncateSync } from 'node:fs';
import path from 'node:path';
import { configFilePath, loadAppConfig } from '../config';
import { labUp, labDir } from './index';
import { ensureExternalTools } from '../prereqs';
import { importRestorePoint, listRestorePoints } from '../repository';
import { buildLinuxDiskImage } from './images/linux-image';
import { buildWindowsDiskImage } from './images/windows-image';
import { connectClient, startAzureRestore, startVSphereRestore, waitWithProgress } from '../client/restore';
import { runWorker } from '../worker';
import { ensureGuestImage, guestVmJson, type GuestName } from './guests';
import { GiB, MiB } from '../domain/units';
import { seededStream } from './images/seeded';

export interface DemoVm {
  name: string;
  vmJson: string;
}

/** Deterministic pseudo-random bytes (seededStream), so demo images are reproducible. */
export function fillDeterministic(fd: number, offset: number, length: number, seed: string): void {
  const next = seededStream(seed);
  for (let done = 0; done < length; ) {
    const buf = next(Math.min(4 * MiB, length - done));
    writeSync(fd, buf, 0, buf.length, offset + done);
    done += buf.length;
  }
}

/** A data disk: random runs separated by zero gaps, like a half-used volume. */
export function buildDataDiskImage(file: string, sizeBytes: number, runs: Array<[offset: number, length: number]>, seed: string): void {
  const fd = openSync(file, 'w');
  try {
    ftruncateSync(fd, sizeBytes);
    for (const [off, len] of runs) fillDeterministic(fd, off, len, `${seed}@${off}`);
  } finally {
    closeSync(fd);
  }
}

function writeVmJson(dir: string, vm: Record<string, unknown>): string {
  const file = path.join(dir, 'vm.json');
  writeFileSync(file, JSON.stringify(vm, null, 2));
  return file;
}

/** Builds the demo VMs' disk images (real partition tables and filesystems) and their vm.json files. */
export const DEMO_VMS = ['demo-linux', 'demo-thick', 'demo-windows'] as const;

export async function buildDemoVms(root: string, log: (s: string) => void = () => {}, only?: Set<string>): Promise<DemoVm[]> {
  const vms: DemoVm[] = [];
  const want = (name: string) => !only || only.has(name);
  if (want('demo-linux')) {
    const dir = path.join(root, 'demo-linux');
    mkdirSync(dir, { recursive: true });
    log('building demo-linux: 8 GiB thin disk, MBR, ext4 root (Ubuntu-style, netplan + ufw)');
    await buildLinuxDiskImage(path.join(dir, 'disk0.img'), {
      sizeBytes: 8 * GiB,
      scheme: 'mbr',
      hostname: 'demo-linux',
      networkStyle: 'netplan',
      firewall: 'ufw',
      usedMiB: 100,
    });
    vms.push({
      name: 'demo-linux',
      vmJson: writeVmJson(dir, {
        name: 'demo-linux',
        guestOs: 'linux',
        firmware: 'bios',
        cpus: 2,
        memoryMiB: 2048,
        nics: [{ network: 'VM Network' }],
        disks: [{ path: 'disk0.img', provisioning: 'thin', label: 'root' }],
      }),
    });
  }
  if (want('demo-thick')) {
    const dir = path.join(root, 'demo-thick');
    mkdirSync(dir, { recursive: true });
    log('building demo-thick: two thick disks (1 GiB GPT ext4 root, RHEL-style ifcfg + firewalld; 256 MiB data)');
    await buildLinuxDiskImage(path.join(dir, 'disk0.img'), {
      sizeBytes: 1 * GiB,
      scheme: 'gpt',
      hostname: 'demo-thick',
      networkStyle: 'ifcfg',
      firewall: 'firewalld',
      usedMiB: 60,
    });
    buildDataDiskImage(
      path.join(dir, 'disk1.img'),
      256 * MiB,
      [
        [0, 16 * MiB],
        [64 * MiB, 24 * MiB],
        [200 * MiB + 4096, 8 * MiB],
      ],
      'demo-thick-data',
    );
    vms.push({
      name: 'demo-thick',
      vmJson: writeVmJson(dir, {
        name: 'demo-thick',
        guestOs: 'linux',
        firmware: 'bios',
        cpus: 4,
        memoryMiB: 4096,
        nics: [{ network: 'VM Network' }, { network: 'DC0_DVPG0' }],
        disks: [
          { path: 'disk0.img', provisioning: 'thick', label: 'root' },
          { path: 'disk1.img', provisioning: 'thick', label: 'data' },
        ],
      }),
    });
  }
  if (want('demo-windows')) {
    const dir = path.join(root, 'demo-windows');
    mkdirSync(dir, { recursive: true });
    log('building demo-windows: 2 GiB thin disk, MBR, NTFS with SYSTEM and SOFTWARE registry hives');
    await buildWindowsDiskImage(path.join(dir, 'disk0.img'), { sizeBytes: 2 * GiB, scheme: 'mbr', hostname: 'DEMO-WIN', usedMiB: 48 });
    vms.push({
      name: 'demo-windows',
      vmJson: writeVmJson(dir, {
        name: 'demo-windows',
        guestOs: 'windows',
        firmware: 'bios',
        cpus: 2,
        memoryMiB: 4096,
        nics: [{ network: 'VM Network' }],
        disks: [{ path: 'disk0.img', provisioning: 'thin', label: 'C' }],
      }),
    });
  }
  return vms;
}

/** Bootable Debian 12 guests (debootstrap, cached): seeded only on request, since a cold build takes minutes. */
export const BOOTABLE_DEMO_VMS: Record<string, GuestName> = { 'demo-deb12-bios': 'debian12-bios', 'demo-deb12-uefi': 'debian12-uefi' };

export interface SeedDemoOptions {
  /** Also seed the bootable guests; default from VMRESTORE_DEMO_BOOTABLE_GUESTS=1. */
  bootableGuests?: boolean;
}

async function seedBootableGuests(
  repo: string,
  imagesDir: string,
  have: Map<string, string>,
  log: (s: string) => void,
): Promise<Record<string, string>> {
  const ids: Record<string, string> = {};
  for (const [vmName, guest] of Object.entries(BOOTABLE_DEMO_VMS)) {
    const known = have.get(vmName);
    if (known) {
      ids[vmName] = known;
      continue;
    }
    const { image, cached } = await ensureGuestImage(guest, { log });
    log(`${vmName}: ${guest} ${cached ? 'from the guest cache' : `built in ${image.build.seconds.toFixed(0)} s`} (${image.dir})`);
    const dir = path.join(imagesDir, vmName);
    mkdirSync(dir, { recursive: true });
    const res = await importRestorePoint(repo, writeVmJson(dir, guestVmJson(image, vmName)));
    ids[vmName] = res.restorePointId;
    log(`imported ${vmName} as ${res.restorePointId} (${res.stats.chunksWritten} chunks, ${res.stats.zeroBlocks} zero blocks not stored)`);
  }
  return ids;
}

/** Makes the demo restore points unless the repository already has them. */
export async function seedDemoRepository(
  repo: string,
  log: (s: string) => void = () => {},
  opts: SeedDemoOptions = {},
): Promise<Record<string, string>> {
  mkdirSync(repo, { recursive: true });
  const existing = await listRestorePoints(repo);
  const have = new Map(existing.map((r) => [r.vmName, r.id]));
  const missing = new Set<string>(DEMO_VMS.filter((n) => !have.has(n)));
  const imagesDir = path.join(path.dirname(repo), 'demo-images');
  const bootable =
    (opts.bootableGuests ?? process.env.VMRESTORE_DEMO_BOOTABLE_GUESTS === '1') ? await seedBootableGuests(repo, imagesDir, have, log) : {};
  if (missing.size === 0) {
    log(`demo restore points already in ${repo}`);
    return { ...Object.fromEntries(DEMO_VMS.map((n) => [n, have.get(n)!])), ...bootable };
  }
  const vms = await buildDemoVms(imagesDir, log, missing);
  const ids: Record<string, string> = Object.fromEntries([...have.entries()].filter(([n]) => (DEMO_VMS as readonly string[]).includes(n)));
  for (const vm of vms) {
    const res = await importRestorePoint(repo, vm.vmJson);
    ids[vm.name] = res.restorePointId;
    log(`imported ${vm.name} as ${res.restorePointId} (${res.stats.chunksWritten} chunks, ${res.stats.zeroBlocks} zero blocks not stored)`);
  }
  return { ...ids, ...bootable };
}

/** npm start: lab up (unless real endpoints are configured), seed, worker, one demo restore, then serve. */
export async function runDemo(opts: { log: (s: string) => void }): Promise<number> {
  const { log } = opts;
  ensureExternalTools('start', { log });
  if (!configFilePath()) {
    log('starting the local lab (Temporal dev server + Web UI, vcsim, Azurite) ...');
    await labUp(log);
  }
  const config = loadAppConfig();
  const ids = await seedDemoRepository(config.repository.path, log);
  const stop = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  const worker = runWorker({ config, log, until: stop });
  const { client, connection } = await connectClient(config);
  const vmName = `demo-linux-restored-${Date.now().toString(36)}`;
  const handle = await startVSphereRestore(
    client,
    { restorePointId: ids['demo-linux'], vmName, transport: 'auto', powerOn: true },
    { taskQueue: config.temporal.taskQueue },
  );
  const ui = config.temporal.uiUrl
    ? `${config.temporal.uiUrl}/namespaces/${config.temporal.namespace}/workflows/${handle.workflowId}`
    : undefined;
  log(`demo restore started: ${handle.workflowId}`);
  if (ui) log(`watch it in the Temporal Web UI: ${ui}`);
  const final = await waitWithProgress(client, handle.workflowId, log);
  log(`demo restore ${final.status}${final.failure ? `: ${final.failure}` : ''}`);
  if (final.result) log(JSON.stringify(final.result, null, 2));
  let ok = final.status === 'COMPLETED';
  if (config.azure) {
    for (const [vm, name] of [
      ['demo-linux', `demo-linux-az-${Date.now().toString(36)}`],
      ['demo-windows', `demowin${Date.now().toString(36).slice(-6)}`],
    ]) {
      const az = await startAzureRestore(client, { restorePointId: ids[vm], vmName: name }, { taskQueue: config.temporal.taskQueue });
      log(
        `demo restore to Azure started: ${az.workflowId}${config.temporal.uiUrl ? ` (${config.temporal.uiUrl}/namespaces/${config.temporal.namespace}/workflows/${az.workflowId})` : ''}`,
      );
      const r = await waitWithProgress(client, az.workflowId, log);
      log(`Azure restore of ${vm} ${r.status}${r.failure ? `: ${r.failure}` : ''}`);
      if (r.result) {
        const res = r.result as { vmId: string; generation: number; guestChanges: unknown[] };
        log(`  VM id ${res.vmId}, Generation ${res.generation}, ${res.guestChanges.length} guest changes`);
      }
      ok &&= r.status === 'COMPLETED';
    }
  }
  await connection.close();
  log(`worker keeps running; Web UI: ${config.temporal.uiUrl ?? '(external)'}; press Ctrl-C to stop`);
  await worker;
  return ok ? 0 : 1;
}

export function demoImagesDir(): string {
  return path.join(labDir(), 'demo-images');
}
