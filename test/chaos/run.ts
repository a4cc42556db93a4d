/**
 * Chaos suite: restores to vSphere and Azure run while the worker is SIGKILLed at seeded random points
 * (inside disk writes, VHD uploads, guest preparation, control activities, and between activities), the
 * Temporal dev server is killed and restarted on its database, and restores are terminated; then the
 * sweeper runs and every outcome is checked against the lab's peers.
 *
 *   npm run chaos -- [--seed N] [--kills 24] [--restarts 2] [--terminations 3]
 */
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { WorkflowHandle } from '@temporalio/client';
import { RESTORE_ID_KEY } from '../../src/activities/vsphere';
import { RESTORE_TAG } from '../../src/activities/sweep';
import { VHD_RESTORE_ID_METADATA_KEY } from '../../src/azure/pageblob';
import type { AzureRestoreResult } from '../../src/domain/azure';
import type { VSphereRestoreResult } from '../../src/domain/vsphere';
import { labRestartTemporal } from '../../src/lab';
import { getRestorePoint } from '../../src/repository';
import { buildDataDiskImage } from '../../src/lab/demo';
import { buildLinuxDiskImage } from '../../src/lab/images/linux-image';
import { startAzureRestore, startVSphereRestore } from '../../src/client/restore';
import { runSweep } from '../../src/client/sweep';
import type { VSphereClient } from '../../src/vsphere';
import { leaseStateQuery, leaseWorkflowId } from '../../src/workflows';
import { labArm, labAzure, labContainer } from '../helpers/azure';
import { importTestVm, openTestEnv, startWorkerProcess, type TestEnv, type WorkerProcess } from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { labVSphere, localFlatFile } from '../helpers/vsphere';
import { materializeVhdBlob } from '../../src/azure/blob-image-read';

export type KillKind = 'writeDisk' | 'uploadVhd' | 'prepareGuestOnHelper' | 'control' | 'between';
const KILL_KINDS: KillKind[] = ['writeDisk', 'uploadVhd', 'prepareGuestOnHelper', 'between', 'control'];
const TRANSFERS = ['writeDisk', 'uploadVhd', 'prepareGuestOnHelper'];

export interface ChaosOptions {
  seed: number;
  kills: number;
  restarts: number;
  terminations: number;
  log?: (line: string) => void;
}

export interface KillRecord {
  n: number;
  kind: KillKind;
  /** What was hit: `<activity> of <workflow id>`, or the workflow id for `between`. */
  hit: string;
  /** false when the point was not reached in time and the worker was killed wherever it was. */
  reached: boolean;
  /** Seconds from the kill until the hit restore made progress on the new worker. */
  secondsLost: number;
}

export interface ChaosReport {
  seed: number;
  kills: KillRecord[];
  restarts: Array<{ atKill: number; downSeconds: number }>;
  terminated: string[];
  restoresStarted: number;
  restoresCompleted: number;
  /** Every violated expectation after the run; must be empty. */
  problems: string[];
  /** Resources that should not exist (extra or leftover VMs, snapshots, attachments, NICs, disks, blobs). */
  leaked: string[];
  sweptItems: number;
  seconds: number;
}

/** mulberry32: a small seeded generator, so a run can be repeated from its seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ms = (t: { seconds?: unknown; nanos?: number | null } | null | undefined): number =>
  t ? Number(t.seconds ?? 0) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : 0;

interface Restore {
  kind: 'vsphere' | 'azure';
  handle: WorkflowHandle;
  restorePointId: string;
  vmName: string;
  closed?: string;
}

interface PendingView {
  name: string;
  attempt: number;
  started: number;
  hasDetails: boolean;
}

export async function runChaos(opts: ChaosOptions): Promise<ChaosReport> {
  const log = opts.log ?? ((l: string) => console.log(l));
  const random = rng(opts.seed);
  const pick = <T>(xs: T[]): T => xs[Math.floor(random() * xs.length)];
  const t0 = Date.now();
  log(`chaos: seed ${opts.seed}, ${opts.kills} kills, ${opts.restarts} server restarts, ${opts.terminations} terminations`);

  // Every kill kind at least once, the rest at random, in a seeded order.
  const plan: KillKind[] = [...KILL_KINDS.slice(0, Math.min(opts.kills, KILL_KINDS.length))];
  while (plan.length < opts.kills) plan.push(pick(KILL_KINDS));
  for (let i = plan.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [plan[i], plan[j]] = [plan[j], plan[i]];
  }
  const positions = (count: number) => {
    const out = new Set<number>();
    while (out.size < Math.min(count, opts.kills)) out.add(1 + Math.floor(random() * opts.kills));
    return out;
  };
  const restartAt = positions(opts.restarts);
  const terminateAt = positions(opts.terminations);

  const env: TestEnv = await openTestEnv('chaos');
  const workerEnv = {
    VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '2',
    VMRESTORE_AZURE_PROXY_IDLE_SECONDS: '2',
    VMRESTORE_AZURE_LEASE_CHECK_SECONDS: '3',
  };
  let worker: WorkerProcess = await startWorkerProcess(env.taskQueue, workerEnv);
  const vs: VSphereClient = await labVSphere(env.config);
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-chaos-'));
  const report: ChaosReport = {
    seed: opts.seed,
    kills: [],
    restarts: [],
    terminated: [],
    restoresStarted: 0,
    restoresCompleted: 0,
    problems: [],
    leaked: [],
    sweptItems: 0,
    seconds: 0,
  };
  const restores: Restore[] = [];
  const stamp = Date.now().toString(36).slice(-5);
  try {
    // Small VMs of random data, so a run spends its time crashing rather than copying.
    const vsDir = path.join(tmp, 'vsphere-vm');
    const azDir = path.join(tmp, 'azure-vm');
    mkdirSync(vsDir);
    mkdirSync(azDir);
    buildDataDiskImage(path.join(vsDir, 'disk0.img'), 64 * MiB, [[0, 64 * MiB]], `chaos-${opts.seed}-vs`);
    const vsPoint = await importTestVm(env.config.repository.path, vsDir, {
      name: 'chaos-vsphere',
      disks: [{ path: 'disk0.img', provisioning: 'thick' }],
    });
    await buildLinuxDiskImage(path.join(azDir, 'disk0.img'), {
      sizeBytes: 256 * MiB,
      scheme: 'mbr',
      hostname: 'chaos',
      networkStyle: 'interfaces',
      firewall: 'iptables',
      usedMiB: 8,
    });
    buildDataDiskImage(path.join(azDir, 'disk1.img'), 64 * MiB, [[0, 64 * MiB]], `chaos-${opts.seed}-az`);
    const azPoint = await importTestVm(env.config.repository.path, azDir, {
      name: 'chaos-azure',
      disks: [
        { path: 'disk0.img', provisioning: 'thin' },
        { path: 'disk1.img', provisioning: 'thick' },
      ],
    });
    const startOne = async (): Promise<void> => {
      const i = restores.length;
      // Alternate the targets; vary the vSphere transport and the Azure proxy.
      if (i % 2 === 0) {
        const vmName = `cv${i}-${stamp}`;
        const restorePointId = vsPoint;
        const transport = i % 4 === 0 ? 'hotadd' : 'direct-nas';
        const handle = await startVSphereRestore(
          env.client,
          { restorePointId, vmName, transport, throttleMBps: 6 },
          { taskQueue: env.taskQueue },
        );
        restores.push({ kind: 'vsphere', handle, restorePointId, vmName });
      } else {
        const vmName = `cz${i}-${stamp}`;
        const restorePointId = azPoint;
        const proxy = i % 4 === 1 ? 'lab-azure-proxy' : undefined;
        const handle = await startAzureRestore(env.client, { restorePointId, vmName, proxy }, { taskQueue: env.taskQueue });
        restores.push({ kind: 'azure', handle, restorePointId, vmName });
      }
      report.restoresStarted++;
    };
    const refresh = async (r: Restore): Promise<PendingView[] | undefined> => {
      if (r.closed) return undefined;
      const d = await r.handle.describe();
      if (d.status.name !== 'RUNNING') {
        r.closed = d.status.name;
        return undefined;
      }
      return (d.raw.pendingActivities ?? []).map((p) => ({
        name: p.activityType?.name ?? '',
        attempt: p.attempt ?? 1,
        started: ms(p.lastStartedTime),
        hasDetails: (p.heartbeatDetails?.payloads?.length ?? 0) > 0,
      }));
    };
    const running = () => restores.filter((r) => !r.closed);
    const keepBusy = async (): Promise<void> => {
      for (const r of running()) await refresh(r).catch(() => undefined);
      while (running().length < 3) await startOne();
    };

    /** Waits for the kill point; returns the restore and activity hit, or undefined after the timeout. */
    const reach = async (kind: KillKind, timeoutMs: number): Promise<{ r: Restore; activity?: string } | undefined> => {
      const deadline = Date.now() + timeoutMs;
      const before = new Map<Restore, Set<string>>();
      let lastBusy = 0;
      while (Date.now() < deadline) {
        if (Date.now() - lastBusy > 3000) {
          await keepBusy();
          lastBusy = Date.now();
        }
        for (const r of running()) {
          const pending = await refresh(r).catch(() => undefined);
          if (!pending) continue;
          if (kind === 'between') {
            // A control activity that was pending a moment ago has just completed.
            const now = new Set(pending.map((p) => p.name));
            const prev = before.get(r);
            before.set(r, now);
            const done = prev && [...prev].find((n) => !now.has(n) && !TRANSFERS.includes(n));
            if (done) return { r, activity: `after ${done}` };
            continue;
          }
          const hit = pending.find((p) =>
            kind === 'control'
              ? !TRANSFERS.includes(p.name) && p.started > 0
              : p.name === kind && p.started > 0 && (kind === 'prepareGuestOnHelper' || p.hasDetails),
          );
          if (hit) return { r, activity: hit.name };
        }
        await sleep(kind === 'between' || kind === 'control' ? 20 : 100);
      }
      return undefined;
    };

    /** Seconds until the restore moves again after a kill at `killedAt`: a new attempt, a new event, or its end. */
    const progressAfter = async (r: Restore, killedAt: number): Promise<number> => {
      const deadline = Date.now() + 180_000;
      while (Date.now() < deadline) {
        try {
          const d = await r.handle.describe();
          const started = (d.raw.pendingActivities ?? []).map((p) => ms(p.lastStartedTime)).filter((t) => t > killedAt);
          const events = (await r.handle.fetchHistory()).events ?? [];
          const later = events
            .filter((e) => ms(e.eventTime) > killedAt && (e.activityTaskCompletedEventAttributes || e.workflowTaskCompletedEventAttributes))
            .map((e) => ms(e.eventTime));
          const t = Math.min(...started, ...later);
          if (Number.isFinite(t)) return (t - killedAt) / 1000;
          if (d.status.name !== 'RUNNING') return (ms(events[events.length - 1]?.eventTime) - killedAt) / 1000;
        } catch {
          // The server may be restarting.
        }
        await sleep(250);
      }
      return Number.NaN;
    };

    for (let n = 1; n <= plan.length; n++) {
      const kind = plan[n - 1];
      const at = await reach(kind, 120_000);
      const target = at?.r ?? pick(running());
      await sleep(at && TRANSFERS.includes(at.activity ?? '') ? Math.floor(random() * 1500) : 0);
      const killedAt = Date.now();
      await worker.kill();
      worker = await startWorkerProcess(env.taskQueue, workerEnv);
      const secondsLost = target ? await progressAfter(target, killedAt) : 0;
      const rec: KillRecord = {
        n,
        kind,
        hit: `${at?.activity ?? 'wherever it was'} of ${target?.handle.workflowId ?? '-'}`,
        reached: !!at,
        secondsLost: Math.round(secondsLost * 10) / 10,
      };
      report.kills.push(rec);
      log(`kill ${n}/${plan.length}: ${kind}${rec.reached ? '' : ' (not reached in time)'}: ${rec.hit}; ${rec.secondsLost} s lost`);

      if (restartAt.has(n)) {
        const { downSeconds } = await labRestartTemporal({ signal: 'SIGKILL' });
        report.restarts.push({ atKill: n, downSeconds: Math.round(downSeconds * 10) / 10 });
        log(`temporal dev server killed and restarted on its database (${downSeconds.toFixed(1)} s down)`);
      }
      if (terminateAt.has(n)) {
        await keepBusy();
        const victim = pick(running().filter((r) => r !== target)) ?? pick(running());
        if (victim) {
          await sleep(Math.floor(random() * 3000));
          await victim.handle.terminate('chaos: terminated at a random point').catch(() => undefined);
          victim.closed = 'TERMINATED';
          report.terminated.push(victim.handle.workflowId);
          log(`terminated ${victim.handle.workflowId}`);
        }
      }
    }

    // Let every surviving restore finish, then sweep what the terminated ones left.
    const drainStart = Date.now();
    for (const r of restores) {
      if (report.terminated.includes(r.handle.workflowId)) continue;
      try {
        await r.handle.result();
        r.closed = 'COMPLETED';
        report.restoresCompleted++;
      } catch (err) {
        r.closed = (await r.handle.describe()).status.name;
        report.problems.push(`${r.handle.workflowId} ended ${r.closed}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    log(`surviving restores finished ${((Date.now() - drainStart) / 1000).toFixed(0)} s after the last kill`);
    // Leases first drop the terminated holders (their check runs every 3 s), then the sweeper runs.
    await sleep(8000);
    const sweep = await runSweep(env.client, env.taskQueue);
    report.sweptItems = sweep.items.filter((i) => report.terminated.includes(workflowOf(i.restoreId) ?? '')).length;
    for (const e of sweep.errors) report.problems.push(`sweep: ${e}`);
    for (const i of sweep.items.filter((x) => x.action === 'failed'))
      report.problems.push(`sweep could not remove ${i.kind} ${i.name}: ${i.error}`);
    log(`sweeper removed ${sweep.items.length} item(s), ${report.sweptItems} of the terminated restores`);

    const checkStart = Date.now();
    await check(env, vs, restores, report, tmp);
    log(`checked every restore against vcsim, Azurite and the ARM simulator in ${((Date.now() - checkStart) / 1000).toFixed(0)} s`);
  } finally {
    await worker.kill().catch(() => undefined);
    await vs.logout().catch(() => undefined);
    await env.close().catch(() => undefined);
    rmSync(tmp, { recursive: true, force: true });
  }
  report.seconds = Math.round((Date.now() - t0) / 1000);
  const lost = report.kills.map((k) => k.secondsLost).filter(Number.isFinite);
  log(
    `seed ${report.seed}: ${report.kills.length} kill points (${report.kills.filter((k) => k.reached).length} reached), ${report.restarts.length} server restarts`,
  );
  log(
    `restores: ${report.restoresStarted} started, ${report.restoresCompleted} completed, ${report.terminated.length} terminated and swept`,
  );
  log(
    `seconds lost per crash: ${lost.map((s) => s.toFixed(1)).join(' ')} (median ${median(lost).toFixed(1)}, max ${Math.max(...lost).toFixed(1)})`,
  );
  log(`resources leaked: ${report.leaked.length}${report.leaked.length ? `: ${report.leaked.join('; ')}` : ''}`);
  if (report.problems.length) log(`problems:\n  ${report.problems.join('\n  ')}`);
  return report;
}

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function digestOfVhdBlob(blobName: string, capacityBytes: number, tmp: string): Promise<string> {
  const raw = path.join(tmp, `${createHash('sha1').update(blobName).digest('hex')}.raw`);
  await materializeVhdBlob(labContainer().getPageBlobClient(blobName), { capacityBytes, imagePath: raw });
  try {
    return await diskDigest(raw);
  } finally {
    rmSync(raw, { force: true });
  }
}

/** Everything the run must leave behind, and nothing more. */
async function check(env: TestEnv, vs: VSphereClient, restores: Restore[], report: ChaosReport, tmp: string): Promise<void> {
  const repo = env.config.repository.path;
  const a = labAzure();
  const { compute, network } = labArm();
  const dc = await vs.datacenter('DC0');
  const tagged = await vs.listVmsByExtraConfigKey(dc, RESTORE_ID_KEY);
  const proxy = await vs.findVmByName(dc, 'vmrestore-proxy');
  const proxyFiles = new Set(proxy ? await proxy.attachedDiskFiles() : []);
  const azureVms = [];
  for await (const v of compute.virtualMachines.list(a.resourceGroup)) azureVms.push(v);
  const nics = [];
  for await (const x of network.networkInterfaces.list(a.resourceGroup)) nics.push(x);
  const disks = [];
  for await (const x of compute.disks.listByResourceGroup(a.resourceGroup)) disks.push(x);
  const blobs = [];
  for await (const b of labContainer().listBlobsFlat({ includeMetadata: true })) blobs.push(b);
  const helper = await compute.virtualMachines.get(a.resourceGroup, a.helperVmName);
  const helperDisks = new Set((helper.storageProfile?.dataDisks ?? []).map((d) => d.managedDisk?.id?.toLowerCase()));

  for (const r of restores) {
    const id = r.handle.workflowId;
    const rp = await getRestorePoint(repo, r.restorePointId);
    const terminated = report.terminated.includes(id);
    const mine = <T extends { tags?: Record<string, string> }>(xs: T[]) => xs.filter((x) => workflowOf(x.tags?.[RESTORE_TAG]) === id);
    if (terminated) {
      for (const v of tagged.filter((t) => workflowOf(t.value) === id)) report.leaked.push(`vSphere VM ${v.name} of terminated ${id}`);
      for (const v of mine(azureVms)) report.leaked.push(`Azure VM ${v.name} of terminated ${id}`);
      for (const v of mine(nics)) report.leaked.push(`NIC ${v.name} of terminated ${id}`);
      for (const v of mine(disks)) report.leaked.push(`managed disk ${v.name} of terminated ${id}`);
      for (const b of blobs.filter((x) => workflowOf(decodeURIComponent(x.metadata?.[VHD_RESTORE_ID_METADATA_KEY] ?? '')) === id))
        report.leaked.push(`blob ${b.name} of terminated ${id}`);
      for (const d of mine(disks)) if (helperDisks.has(d.id?.toLowerCase())) report.leaked.push(`helper attachment ${d.name}`);
      continue;
    }
    if (r.closed !== 'COMPLETED') continue;
    if (r.kind === 'vsphere') {
      const result = (await r.handle.result()) as VSphereRestoreResult;
      const vms = tagged.filter((t) => workflowOf(t.value) === id);
      if (vms.length !== 1) report.leaked.push(`${vms.length} vSphere VMs for ${id}`);
      const vm = vms[0]?.vm;
      if (!vm) continue;
      const snaps = await vm.snapshots();
      for (const s of snaps) report.leaked.push(`snapshot ${s.name} on ${r.vmName}`);
      const cfg = await vm.config();
      for (const d of cfg.disks) if (proxyFiles.has(d.fileName)) report.leaked.push(`HotAdd attachment ${d.fileName}`);
      for (const [i, d] of cfg.disks.entries()) {
        const got = await diskDigest(localFlatFile(d.fileName));
        if (got !== (await backedUpDiskDigest(repo, r.restorePointId, i)))
          report.problems.push(`${id} disk ${i}: datastore bytes differ from the restore point`);
      }
      if (result.disks.length !== rp.vm.disks.length) report.problems.push(`${id}: ${result.disks.length} disks written`);
    } else {
      const result = (await r.handle.result()) as AzureRestoreResult;
      const vms = mine(azureVms);
      if (vms.length !== 1) report.leaked.push(`${vms.length} Azure VMs for ${id}`);
      if (mine(nics).length !== 1) report.leaked.push(`${mine(nics).length} NICs for ${id}`);
      if (mine(disks).length !== rp.vm.disks.length)
        report.leaked.push(`${mine(disks).length} managed disks for ${id} (${rp.vm.disks.length} backed up)`);
      for (const d of mine(disks)) if (helperDisks.has(d.id?.toLowerCase())) report.leaked.push(`helper attachment ${d.name}`);
      // Data disks are byte for byte the backup (the OS disk carries the guest preparation).
      for (const d of result.disks.filter((x) => x.diskIndex > 0)) {
        const name = decodeURIComponent(new URL(d.blobUrl).pathname.split('/').slice(3).join('/'));
        const got = await digestOfVhdBlob(name, rp.vm.disks[d.diskIndex].capacityBytes, tmp);
        if (got !== (await backedUpDiskDigest(repo, r.restorePointId, d.diskIndex)))
          report.problems.push(`${id} disk ${d.diskIndex}: VHD bytes differ`);
      }
    }
  }

  // Leases empty and appliances off once their idle timeout has passed.
  const leases = [
    { kind: 'helper' as const, name: `${a.location}-${a.helperVmName}`, vm: a.helperVmName },
    { kind: 'proxy' as const, name: 'lab-azure-proxy', vm: a.proxyVmName },
  ];
  for (const l of leases) {
    const handle = env.client.workflow.getHandle(leaseWorkflowId(l, env.taskQueue));
    let state;
    const deadline = Date.now() + 60_000;
    do {
      state = await handle.query(leaseStateQuery).catch(() => undefined);
      if (!state || (state.holders.length === 0 && !state.poweredOn)) break;
      await sleep(500);
    } while (Date.now() < deadline);
    if (state && state.holders.length > 0) report.leaked.push(`${l.kind} lease still held by ${state.holders.join(', ')}`);
    if (state?.poweredOn) report.leaked.push(`${l.kind} lease has its VM on`);
    const view = await compute.virtualMachines.instanceView(a.resourceGroup, l.vm);
    const power = view.statuses?.find((s) => s.code?.startsWith('PowerState/'))?.code;
    if (power !== 'PowerState/deallocated') report.leaked.push(`${l.kind} VM ${l.vm} is ${power}`);
  }
}

function parseArgs(argv: string[]): ChaosOptions {
  const get = (flag: string, dflt: number): number => {
    const i = argv.indexOf(flag);
    if (i < 0) return dflt;
    const v = Number(argv[i + 1]);
    if (!Number.isInteger(v) || v < 0) throw new Error(`${flag} needs a whole number, got '${argv[i + 1]}'`);
    return v;
  };
  return {
    seed: get('--seed', Math.floor(Math.random() * 2 ** 31)),
    kills: get('--kills', 24),
    restarts: get('--restarts', 2),
    terminations: get('--terminations', 3),
  };
}

if (require.main === module) {
  runChaos(parseArgs(process.argv.slice(2))).then(
    (r) => {
      console.log(JSON.stringify({ ...r, problems: r.problems.length, leaked: r.leaked.length }));
      process.exit(r.problems.length === 0 && r.leaked.length === 0 && r.kills.length >= 1 ? 0 : 1);
    },
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}

/** The workflow of a restore id (`<workflow id>@<first run id>`), which is what this run tracks restores by. */
function workflowOf(restoreId: string | undefined): string | undefined {
  return restoreId?.replace(/@[0-9a-f-]{36}$/, '');
}
