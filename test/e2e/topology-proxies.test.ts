import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Client, WorkflowHandle } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { RESTORE_ID_KEY } from '../../src/activities/vsphere';
import { startVSphereRestore } from '../../src/client/restore';
import { leaseStateQuery, leaseWorkflowId } from '../../src/domain/lease';
import { progressQuery } from '../../src/domain/progress';
import { proxySlotTarget } from '../../src/domain/proxy-slots';
import { proxyTaskQueue } from '../../src/domain/task-queues';
import type { VSphereRestoreRequest, VSphereRestoreResult } from '../../src/domain/vsphere';
import { labProxy, readLabState } from '../../src/lab';
import { createProxyVm } from '../../src/lab/inventory';
import type { VSphereClient } from '../../src/vsphere';
import { assertServesNoVSphereProxyQueue, importRandomThickVm, openTestEnv, ROOT, type TestEnv, type WorkerProcess } from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { makeDataMoverCredentials } from '../helpers/data-mover';
import { processTreeIo } from '../helpers/proc-io';
import { buildTopology, noTopology, type Topology } from '../helpers/topology';
import { labVSphere, localFlatFile } from '../helpers/vsphere';
import { historyEvents, type HistoryEvent } from '../helpers/workflow-env';

/**
 * The proxies as hosts of their own: the control worker on `backup`, `vmrestore worker --proxy proxy01`
 * in proxy01's namespace and `--proxy proxy02` in proxy02's, each reading its own host's configuration.
 * One VM's disks spread over both, a proxy killed mid-disk, and a proxy's host cut off mid-disk.
 *
 * The proxies differ (proxy01 also has the lab's NFS mount and LUN, for direct-nas and direct-san); the tests ask for NBD
 * or HotAdd, which both offer. A HotAdd disk moves from a lost proxy01 to proxy02 from its checkpoint (a
 * checkpoint resumes only on the transport that wrote it).
 *
 * In the lab a proxy's NFS mount, LUN and HotAdd device folder are on this machine's filesystem (the
 * namespaces share it), so direct and HotAdd writes do not cross the proxy's link (only its heartbeats and
 * Temporal traffic do): the failover tests tell the hosts apart by the identities in the history and on
 * the server. NBD sends the data to vcsim on `backup`, across the proxy's link: the spread test uses it
 * and reads the links' counters.
 */

const MiB = 1024 * 1024;
const PROXY2_VM = 'vmrestore-proxy02';
const PROXY_NAMES = ['proxy01', 'proxy02'] as const;
type ProxyName = (typeof PROXY_NAMES)[number];
let env: TestEnv;
let vs: VSphereClient;
let topo: Topology;
let tmp: string;
let control: WorkerProcess | undefined;
const proxyEnv = new Map<ProxyName, NodeJS.ProcessEnv>();
const proxies = new Map<ProxyName, WorkerProcess>();
const figures: string[] = [];

/**
 * The two proxies as the control side knows them, each with the lab's paths for its VM: proxy01 offers
 * every transport the lab has (its NFS mount and LUN too), proxy02 HotAdd and NBD.
 */
function proxyEntries(): Record<ProxyName, Record<string, unknown>> {
  const v = readLabState().vsphere!;
  return {
    proxy01: { ...labProxy(v, 'proxy01', v.proxyVmName), maxTasks: 2, embeddedWorker: false },
    proxy02: {
      ...labProxy(v, 'proxy02', PROXY2_VM),
      transports: ['hotadd', 'nbd'],
      nasMounts: {},
      sanLuns: {},
      maxTasks: 2,
      embeddedWorker: false,
    },
  };
}

/** Until a worker polls the proxy's activity queue; returns its identity. */
async function pollerOf(client: Client, name: ProxyName, pid?: number): Promise<string> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const d = await client.workflowService.describeTaskQueue({
      namespace: env.config.temporal.namespace,
      taskQueue: { name: proxyTaskQueue(env.taskQueue, name), kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
      taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    });
    const p = d.pollers?.find(
      (x) => x.identity === `${pid}@${name}/vmrestore-proxy-${name}` || (!pid && x.identity?.endsWith(`/vmrestore-proxy-${name}`)),
    );
    if (p) return p.identity!;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`no worker polls the queue of proxy ${name}`);
}

/** `vmrestore worker --proxy NAME` in the proxy's own namespace, with its host's configuration. */
async function startProxy(name: ProxyName): Promise<WorkerProcess> {
  const w = await topo.startWorker(name, env.taskQueue, proxyEnv.get(name), ['--proxy', name]);
  assert.match(w.output(), new RegExp(`proxy worker \\(${name}\\) polling task queue '${proxyTaskQueue(env.taskQueue, name)}'`));
  assert.doesNotMatch(w.output(), new RegExp(`proxy worker \\((?!${name}\\))`), `the worker on ${name} serves only ${name}'s queue`);
  proxies.set(name, w);
  await pollerOf(env.client, name, w.child.pid);
  return w;
}

/** Disks of `sizes` MiB of random data, imported as a thick VM; returns its restore point. */
const importVm = (name: string, sizes: number[]): Promise<string> => importRandomThickVm(env.config.repository.path, tmp, name, sizes);

async function restore(rpId: string, vmName: string, extra: Partial<VSphereRestoreRequest>): Promise<WorkflowHandle> {
  return startVSphereRestore(env.client, { restorePointId: rpId, vmName, ...extra }, { taskQueue: env.taskQueue });
}

/** Every restored disk equals its backup, the restore made one VM, nothing of it stays attached to a proxy VM; the VM is removed. */
async function checkInventoryAndRemove(rpId: string, result: VSphereRestoreResult, vmName: string): Promise<void> {
  const dc = await vs.datacenter('DC0');
  const vms = await vs.findVmsByExtraConfig(dc, RESTORE_ID_KEY, result.restoreId);
  assert.equal(vms.length, 1, 'exactly one VM for the restore');
  const cfg = await vms[0].config();
  assert.equal(cfg.disks.length, result.disks.length, 'the VM has the restored disks');
  for (const d of result.disks) {
    const file = localFlatFile(cfg.disks[d.diskIndex].fileName);
    assert.equal(
      await diskDigest(file),
      await backedUpDiskDigest(env.config.repository.path, rpId, d.diskIndex),
      `disk ${d.diskIndex} bytes`,
    );
  }
  for (const name of [readLabState().vsphere!.proxyVmName, PROXY2_VM]) {
    const pvm = await vs.findVmByName(dc, name);
    assert.ok(pvm, `proxy VM ${name} exists`);
    assert.deepEqual(
      (await pvm.attachedDiskFiles()).filter((f) => f.includes(vmName)),
      [],
      `nothing of ${vmName} attached to ${name}`,
    );
  }
  assert.deepEqual(await vms[0].snapshots(), [], 'no restore snapshot remains');
  await vms[0].destroy();
}

const ms = (e: HistoryEvent) => Number(e.eventTime?.seconds ?? 0) * 1000 + Math.floor((e.eventTime?.nanos ?? 0) / 1e6);

/** Each started activity's type and identity, and each workflow task's identity, from the history. */
function whoDidWhat(events: HistoryEvent[]): {
  activities: Array<{ type: string; identity: string; attempt: number }>;
  workflowTasks: string[];
} {
  const types = new Map<number, string>();
  for (const e of events) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s) types.set(Number(e.eventId), s.activityType?.name ?? '');
  }
  return {
    activities: events
      .filter((e) => e.activityTaskStartedEventAttributes)
      .map((e) => {
        const s = e.activityTaskStartedEventAttributes!;
        return { type: types.get(Number(s.scheduledEventId)) ?? '', identity: s.identity ?? '', attempt: s.attempt ?? 1 };
      }),
    workflowTasks: events
      .filter((e) => e.workflowTaskStartedEventAttributes)
      .map((e) => e.workflowTaskStartedEventAttributes!.identity ?? ''),
  };
}

/** Every workflow task and every activity but the disk writes ran on backup, in the control worker. */
function assertControlOnBackup(events: HistoryEvent[]): void {
  const who = whoDidWhat(events);
  const controlId = `${control!.child.pid}@backup`;
  for (const id of who.workflowTasks) assert.equal(id, controlId, 'workflow tasks ran in the control worker on backup');
  for (const a of who.activities.filter((x) => x.type !== 'writeDisk')) {
    assert.equal(a.identity, controlId, `${a.type} ran in the control worker on backup`);
  }
}

/** Until no slot of either proxy is held (the last restore's releases have reached the lease workflows). */
async function slotsIdle(): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    let held = 0;
    for (const name of PROXY_NAMES) {
      try {
        const state = await env.client.workflow.getHandle(leaseWorkflowId(proxySlotTarget(name), env.taskQueue)).query(leaseStateQuery);
        held += Object.values(state.reserved ?? {}).reduce((a, n) => a + n, 0);
      } catch (err) {
        if ((err as { name?: string }).name !== 'WorkflowNotFoundError') throw err;
      }
    }
    if (held === 0) return;
    if (Date.now() > deadline) throw new Error(`proxy slots still held after 60 s (${held})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Each writeDisk the workflow scheduled: the queue it went to, the identity that started its last attempt
 * (none when that attempt never started, as for a retry on a lost proxy's queue) and how it ended.
 */
function diskWrites(events: HistoryEvent[]): Array<{ queue: string; started?: string; ended: string }> {
  const writes = new Map<number, { queue: string; started?: string; ended: string }>();
  for (const e of events) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s?.activityType?.name === 'writeDisk') writes.set(Number(e.eventId), { queue: s.taskQueue?.name ?? '', ended: 'open' });
    const st = e.activityTaskStartedEventAttributes;
    if (st && writes.has(Number(st.scheduledEventId))) writes.get(Number(st.scheduledEventId))!.started = st.identity ?? '';
    if (e.activityTaskCompletedEventAttributes) {
      const w = writes.get(Number(e.activityTaskCompletedEventAttributes.scheduledEventId));
      if (w) w.ended = 'completed';
    }
    const t = e.activityTaskTimedOutEventAttributes;
    if (t) {
      const w = writes.get(Number(t.scheduledEventId));
      const type = t.failure?.timeoutFailureInfo?.timeoutType;
      if (w) w.ended = `timed out (${type !== undefined && type !== null ? temporal.api.enums.v1.TimeoutType[type] : '?'})`;
    }
    if (e.activityTaskFailedEventAttributes) {
      const w = writes.get(Number(e.activityTaskFailedEventAttributes.scheduledEventId));
      if (w) w.ended = 'failed';
    }
  }
  return [...writes.values()];
}

/** The server's record of the running disk write: the worker that started its current attempt. */
async function pendingWriter(handle: WorkflowHandle): Promise<{ identity: string; attempt: number } | undefined> {
  const pa = (await handle.describe()).raw.pendingActivities?.find((a) => a.activityType?.name === 'writeDisk');
  return pa?.lastWorkerIdentity ? { identity: pa.lastWorkerIdentity, attempt: pa.attempt ?? 1 } : undefined;
}

function writerIdentities(events: HistoryEvent[]): string[] {
  return whoDidWhat(events)
    .activities.filter((a) => a.type === 'writeDisk')
    .map((a) => a.identity);
}

/**
 * The history of a handed-over disk: the write went to proxy01's queue first and ended in a timeout (the
 * lost proxy's started event is kept only if its last attempt started), then to proxy02's, whose worker
 * completed it.
 */
function assertHandedOver(writes: ReturnType<typeof diskWrites>, lostId: string, survivorId: string): void {
  assert.equal(writes.length, 2, `two disk writes scheduled: ${JSON.stringify(writes)}`);
  assert.equal(writes[0].queue, proxyTaskQueue(env.taskQueue, 'proxy01'));
  assert.match(writes[0].ended, /^timed out/, `proxy01's write timed out: ${JSON.stringify(writes[0])}`);
  if (writes[0].started !== undefined) assert.equal(writes[0].started, lostId);
  assert.equal(writes[1].queue, proxyTaskQueue(env.taskQueue, 'proxy02'));
  assert.deepEqual([writes[1].started, writes[1].ended], [survivorId, 'completed'], 'proxy02’s worker completed the write');
}

/**
 * A restore whose disk 0 is being written on proxy01, past `minBytes`. Equally good, equally loaded proxies
 * are taken in an order rotated by the disk's holder name, which carries the run id: a restore whose disk
 * went to proxy02 is cancelled (its compensation removes the VM and detaches the disk) and started again.
 */
async function restoreOnProxy01(
  rpId: string,
  vmName: string,
  extra: Partial<VSphereRestoreRequest>,
  minBytes: number,
): Promise<{ handle: WorkflowHandle; vmName: string; bytesDone: number; tries: number }> {
  const dc = await vs.datacenter('DC0');
  for (let tries = 1; tries <= 8; tries++) {
    const name = `${vmName}-${tries}`;
    const handle = await restore(rpId, name, extra);
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      const d = (await handle.query(progressQuery)).disks[0];
      if (d?.state === 'writing' && d.proxy === 'proxy02') break;
      if (d?.state === 'writing' && d.proxy === 'proxy01' && d.bytesDone >= minBytes)
        return { handle, vmName: name, bytesDone: d.bytesDone, tries };
      await new Promise((r) => setTimeout(r, 200));
    }
    await handle.cancel();
    await handle.result().then(
      () => assert.fail(`the cancelled restore ${name} completed`),
      () => undefined,
    );
    assert.equal(await vs.findVmByName(dc, name), null, `the cancelled restore removed ${name}`);
    await slotsIdle();
  }
  throw new Error('in 8 restores no disk went to proxy01');
}

const identityOf = (name: ProxyName, w: WorkerProcess) => `${w.child.pid}@${name}/vmrestore-proxy-${name}`;

/** Samples a process tree's written bytes (kernel accounting) every 250 ms until stopped. */
function ioSampler(pid: number): { samples: Array<{ at: number; wchar: number }>; stop(): void } {
  const samples: Array<{ at: number; wchar: number }> = [];
  const take = () => {
    try {
      samples.push({ at: Date.now(), wchar: processTreeIo(pid).wchar });
    } catch {
      // The process is gone.
    }
  };
  take();
  const t = setInterval(take, 250);
  return { samples, stop: () => clearInterval(t) };
}

/** The last moment a sampled process wrote more than `threshold` bytes within one sample interval. */
function lastBulkWrite(samples: Array<{ at: number; wchar: number }>, threshold = MiB): number | undefined {
  let last: number | undefined;
  for (let i = 1; i < samples.length; i++) if (samples[i].wchar - samples[i - 1].wchar > threshold) last = samples[i].at;
  return last;
}

describe('proxies as hosts: control on backup, proxy workers in proxy01 and proxy02', { skip: noTopology(), timeout: 1_200_000 }, () => {
  before(async () => {
    env = await openTestEnv('topoproxies');
    vs = await labVSphere(env.config);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-topoproxies-'));
    const dc = await vs.datacenter('DC0');
    if (!(await vs.findVmByName(dc, PROXY2_VM))) await createProxyVm(vs, 'DC0', PROXY2_VM, env.config.vsphere.profiles.lab.datastore!);
    const t0 = Date.now();
    topo = await buildTopology();
    figures.push(`topology ${topo.hosts.join(', ')} on ${topo.subnet} built in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    const entries = proxyEntries();
    // The control side knows both proxies; each proxy host's configuration names only itself.
    const controlEnv = topo.hostConfig('backup', (c) => ({ ...c, proxies: Object.values(entries), verifier: { embeddedWorker: false } }));
    for (const name of PROXY_NAMES) {
      proxyEnv.set(
        name,
        topo.hostConfig(name, (c) => ({ ...c, proxies: [entries[name]], verifier: { embeddedWorker: false } })),
      );
    }
    const t1 = Date.now();
    const [c] = await Promise.all([topo.startWorker('backup', env.taskQueue, controlEnv), ...PROXY_NAMES.map(startProxy)]);
    control = c;
    assertServesNoVSphereProxyQueue(control.output(), env.taskQueue);
    figures.push(`control worker and two proxy workers polling in ${((Date.now() - t1) / 1000).toFixed(1)} s`);
  });
  after(async () => {
    for (const w of proxies.values()) await w.stop().catch(() => {});
    await control?.stop().catch(() => {});
    await topo?.teardown();
    await vs?.logout().catch(() => {});
    await env?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    console.log(`topology-proxies figures:\n  ${figures.join('\n  ')}`);
  });

  it("one VM's disks spread over both proxies over NBD: each disk's bytes cross its proxy's link, written by the worker on that host", async () => {
    const DISK = 64 * MiB;
    const rpId = await importVm('spread', [DISK / MiB, DISK / MiB]);
    const vmName = `t-tspread-${Date.now().toString(36)}`;
    const link0 = Object.fromEntries(PROXY_NAMES.map((n) => [n, topo.linkBytes(n)]));
    const t0 = Date.now();
    const handle = await restore(rpId, vmName, { transport: 'nbd', diskConcurrency: 2 });
    const result = (await handle.result()) as VSphereRestoreResult;
    const seconds = (Date.now() - t0) / 1000;
    const sent = Object.fromEntries(PROXY_NAMES.map((n) => [n, topo.linkBytes(n).sent - link0[n].sent])) as Record<ProxyName, number>;
    assert.deepEqual(result.disks.map((d) => d.proxy).sort(), [...PROXY_NAMES], 'each proxy wrote one disk');
    for (const d of result.disks) {
      const name = d.proxy as ProxyName;
      assert.equal(d.transport, 'nbd');
      assert.equal(d.workerIdentity, identityOf(name, proxies.get(name)!), `disk ${d.diskIndex} written by the worker process on ${name}`);
      // NBD sends the disk to vcsim, which listens on backup only: the bytes leave through this proxy's link,
      // and the other disk's do not.
      assert.ok(sent[name] >= DISK, `${name}'s link carried its disk out (${sent[name]} >= ${DISK})`);
      assert.ok(sent[name] < 2 * DISK, `${name}'s link carried one disk, not both (${sent[name]} < ${2 * DISK})`);
    }
    const events = await historyEvents(handle);
    assert.deepEqual(
      writerIdentities(events).sort(),
      result.disks.map((d) => d.workerIdentity).sort(),
      'the started events show the same two workers, one per host',
    );
    assertControlOnBackup(events);
    await checkInventoryAndRemove(rpId, result, vmName);
    figures.push(
      `spread, 2 x ${DISK / MiB} MiB over NBD: ${seconds.toFixed(1)} s; link out ` +
        PROXY_NAMES.map((n) => `${n} ${(sent[n] / MiB).toFixed(1)} MiB (${(sent[n] / DISK).toFixed(3)} per byte of its disk)`).join(', '),
    );
  });

  it('proxy01 SIGKILLed mid-disk (HotAdd): proxy02 finishes the disk from the checkpoint, bytes identical, nothing left attached', async () => {
    const DISK = 256 * MiB;
    const rpId = await importVm('kill', [DISK / MiB]);
    let vmName = `t-tkill-${Date.now().toString(36)}`;
    const victim = proxies.get('proxy01')!;
    const victimId = identityOf('proxy01', victim);
    const survivorId = identityOf('proxy02', proxies.get('proxy02')!);
    await slotsIdle();
    const t0 = Date.now();
    const started = await restoreOnProxy01(rpId, vmName, { transport: 'hotadd', throttleMBps: 24 }, 64 * MiB);
    const { handle, bytesDone: atKill } = started;
    vmName = started.vmName;
    assert.equal((await pendingWriter(handle))?.identity, victimId, 'the server shows proxy01’s worker running the write');
    const killedAt = Date.now();
    await victim.kill();
    proxies.delete('proxy01');
    const result = (await handle.result()) as VSphereRestoreResult;
    const seconds = (Date.now() - t0) / 1000;
    const disk = result.disks[0];
    assert.equal(disk.proxy, 'proxy02', 'proxy02 finished the disk');
    assert.deepEqual(disk.failedOver, ['proxy01'], 'the result names the proxy lost');
    assert.equal(disk.workerIdentity, survivorId);
    assert.ok(disk.resumedFromOffset > 0, 'continued from proxy01’s checkpoint, not from zero');
    const events = await historyEvents(handle);
    const writes = diskWrites(events);
    assertHandedOver(writes, victimId, survivorId);
    assertControlOnBackup(events);
    const scheduled = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'writeDisk');
    const attaches = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'attachToProxy').length;
    const detaches = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'detachFromProxy').length;
    assert.equal(disk.transport, 'hotadd', 'proxy02 wrote with HotAdd');
    assert.equal(attaches, 2, 'attached to proxy01, then to proxy02');
    assert.equal(detaches, 2, 'detached from each');
    await checkInventoryAndRemove(rpId, result, vmName);
    figures.push(
      `proxy01 killed at ${(atKill / MiB).toFixed(0)} MiB of ${DISK / MiB} MiB (HotAdd, 24 MB/s): disk handed to proxy02 ` +
        `${((ms(scheduled[1]) - killedAt) / 1000).toFixed(1)} s after the kill, resumed at ${(disk.resumedFromOffset / MiB).toFixed(0)} MiB; restore ${seconds.toFixed(1)} s (${started.tries} started until one went to proxy01); ` +
        `history: ${writes.map((w) => `${w.queue.split('-proxy-')[1]} ${w.ended}`).join(', ')}`,
    );
    await startProxy('proxy01');
  });

  /** What the cut test saw, for the hand-over expectation after it. */
  let cutSeen:
    | { disk: VSphereRestoreResult['disks'][number]; writes: ReturnType<typeof diskWrites>; staleId: string; survivorId: string }
    | undefined;

  it('proxy01’s host cut off for 40 s mid-disk (HotAdd): one writer at a time, the disk completes byte for byte, one VM, nothing attached', async () => {
    const DISK = 256 * MiB;
    const throttleMBps = 4;
    const rpId = await importVm('cut', [DISK / MiB]);
    let vmName = `t-tcut-${Date.now().toString(36)}`;
    const stale = proxies.get('proxy01') ?? (await startProxy('proxy01'));
    const staleId = identityOf('proxy01', stale);
    const survivorId = identityOf('proxy02', proxies.get('proxy02')!);
    await slotsIdle();
    const t0 = Date.now();
    const started = await restoreOnProxy01(rpId, vmName, { transport: 'hotadd', throttleMBps }, 32 * MiB);
    const { handle, bytesDone: atCut } = started;
    vmName = started.vmName;
    assert.equal((await pendingWriter(handle))?.identity, staleId, 'the server shows proxy01’s worker running the write');
    const io = ioSampler(stale.child.pid!);
    const cut = await topo.cutLink('proxy01', { forMs: 40_000 });
    // The server's view of the write while the host is cut off and after: attempts and the proxy in charge.
    const seen: Array<{ at: number; attempt: number; identity: string; proxy?: string }> = [];
    let watching = true;
    const watch = (async () => {
      while (watching) {
        const w = await pendingWriter(handle).catch(() => undefined);
        const d = (await handle.query(progressQuery).catch(() => undefined))?.disks[0];
        if (w) seen.push({ at: Date.now(), attempt: w.attempt, identity: w.identity, proxy: d?.proxy });
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    const { downMs } = await cut.restored;
    const backAt = Date.now();
    const result = (await handle.result()) as VSphereRestoreResult;
    const doneAt = Date.now();
    watching = false;
    await watch;
    // Give a stale attempt time to show what it does with the link back: write on, or stop.
    await new Promise((r) => setTimeout(r, Math.max(0, backAt + 20_000 - Date.now())));
    io.stop();
    const disk = result.disks[0];
    const events = await historyEvents(handle);
    const writes = diskWrites(events);
    cutSeen = { disk, writes, staleId, survivorId };
    const handedOver = seen.find((x) => x.proxy === 'proxy02');
    const bytesAt = (t: number) => io.samples.filter((x) => x.at <= t).at(-1)?.wchar ?? 0;
    const proxy01AfterDone = bytesAt(Infinity) - bytesAt(doneAt);
    const lastWrite = lastBulkWrite(io.samples);
    figures.push(
      `proxy01 cut at ${(atCut / MiB).toFixed(0)} MiB of ${DISK / MiB} MiB (HotAdd, ${throttleMBps} MB/s) for ${(downMs / 1000).toFixed(1)} s: ` +
        `finished by ${disk.proxy} (failedOver ${JSON.stringify(disk.failedOver ?? [])}, resumed at ${(disk.resumedFromOffset / MiB).toFixed(0)} MiB), ` +
        (handedOver ? `handed to proxy02 ${((handedOver.at - cut.at) / 1000).toFixed(1)} s after the cut; ` : 'never handed to proxy02; ') +
        `write attempts on the server during and after the cut: ${[...new Set(seen.map((x) => `${x.attempt}@${x.identity.split('/')[0]}`))].join(' ')}; ` +
        `restore done ${((doneAt - backAt) / 1000).toFixed(1)} s after the link was back (${((doneAt - t0) / 1000).toFixed(1)} s in all, ${started.tries} started until one went to proxy01); ` +
        `proxy01 wrote ${(bytesAt(backAt) - bytesAt(cut.at)) / MiB > 0 ? ((bytesAt(backAt) - bytesAt(cut.at)) / MiB).toFixed(1) : '0'} MiB during the cut, ` +
        `${((bytesAt(doneAt) - bytesAt(backAt)) / MiB).toFixed(1)} MiB from the link's return to the end, ${(proxy01AfterDone / MiB).toFixed(1)} MiB after the end ` +
        `(last bulk write ${lastWrite ? `${((lastWrite - backAt) / 1000).toFixed(1)} s after the link was back` : 'none seen'}); ` +
        `history: ${writes.map((w) => `${w.queue.split('-proxy-')[1]} ${w.ended}${w.started ? ` by ${w.started.split('/')[0]}` : ''}`).join(', ')}`,
    );
    assert.equal(stale.child.exitCode, null, 'proxy01’s worker lived through the cut');
    // Whoever finished, the result and the history agree on it, and it is a proxy worker on its own host.
    const finisher = disk.proxy as ProxyName;
    assert.ok(PROXY_NAMES.includes(finisher), `a proxy finished the disk (${disk.proxy})`);
    assert.equal(disk.workerIdentity, finisher === 'proxy01' ? staleId : survivorId, 'the result names the worker on the finishing host');
    assert.equal(writes.at(-1)?.started, disk.workerIdentity, 'the history’s last disk write was started by that worker');
    assert.equal(writes.at(-1)?.ended, 'completed');
    assertControlOnBackup(events);
    // Nothing writes the disk after the restore is done (the VM may be in use from then on).
    assert.ok(proxy01AfterDone < MiB, `proxy01 wrote ${proxy01AfterDone} bytes after the restore was done`);
    // Fenced: cut off from the server, proxy01 stops issuing blocks after half a heartbeat timeout (5 s; 8 s
    // with the writes in flight), before the server can give the disk to proxy02; once the disk has moved,
    // it never writes again.
    const fencedAt = cut.at + 8_000;
    const duringCut = bytesAt(backAt) - bytesAt(fencedAt);
    assert.ok(duringCut < MiB, `proxy01 wrote ${duringCut} bytes from 8 s after the cut until the link was back`);
    if (finisher === 'proxy02') {
      const afterFence = bytesAt(Infinity) - bytesAt(fencedAt);
      assert.ok(afterFence < MiB, `proxy01 wrote ${afterFence} bytes after it was fenced, the disk being proxy02's`);
    }
    // Bytes compared after any stale attempt had its chance to write on.
    await checkInventoryAndRemove(rpId, result, vmName);
  });

  it('the disk cut off with proxy01 moves to proxy02 during the cut', () => {
    assert.ok(cutSeen, 'the cut test ran');
    assert.equal(cutSeen.disk.proxy, 'proxy02', 'proxy02 finished the disk');
    assert.deepEqual(cutSeen.disk.failedOver, ['proxy01']);
    assertHandedOver(cutSeen.writes, cutSeen.staleId, cutSeen.survivorId);
  });

  it('proxy02 reads through the data mover on repo01: their link cut for 10 s and the data mover restarted mid-restore, the disk completes byte for byte', async () => {
    const DISK = 192 * MiB;
    const rpId = await importVm('repo', [DISK / MiB]);
    const vmName = `t-trepo-${Date.now().toString(36)}`;
    const creds = makeDataMoverCredentials(path.join(tmp, 'pki'));
    const listen = `${topo.address('repo01')}:8443`;
    // repo01 holds only the repository section: no vCenter, Temporal or Azure settings.
    const repoEnv = topo.hostConfig('repo01', (c) => ({
      repository: {
        ...(c.repository as Record<string, unknown>),
        tokenFile: creds.tokenFile,
        serve: { certFile: creds.certFile, keyFile: creds.keyFile },
      },
    }));
    const startMover = async () => {
      const child = topo.spawn(
        'repo01',
        process.execPath,
        [path.join(ROOT, 'bin', 'vmrestore.cjs'), 'repository', 'serve', '--listen', listen],
        {
          env: { ...process.env, ...repoEnv },
        },
      );
      let out = '';
      child.stderr!.on('data', (d) => (out += d));
      await new Promise<void>((resolve, reject) => {
        child.stdout!.on('data', (d) => {
          out += d;
          if (/listening at https:/.test(out)) resolve();
        });
        child.once('exit', (code) => reject(new Error(`repository serve on repo01 exited with ${code}:\n${out}`)));
      });
      return child;
    };
    let mover = await startMover();
    // proxy02's host reads every chunk from repo01: its local repository path does not exist.
    await proxies.get('proxy02')!.stop();
    const entries = proxyEntries();
    proxyEnv.set(
      'proxy02',
      topo.hostConfig('proxy02', (c) => ({
        ...c,
        proxies: [entries.proxy02],
        verifier: { embeddedWorker: false },
        repository: {
          path: path.join(tmp, 'no-local-repository'),
          url: `https://${listen}`,
          tokenFile: creds.tokenFile,
          thumbprint: creds.thumbprint,
        },
      })),
    );
    const reader = await startProxy('proxy02');
    try {
      const repo0 = topo.linkBytes('repo01');
      const t0 = Date.now();
      const handle = await restore(rpId, vmName, { transport: 'hotadd', throttleMBps: 8, proxy: 'proxy02' });
      const past = async (bytes: number) => {
        const deadline = Date.now() + 180_000;
        while (Date.now() < deadline) {
          const d = (await handle.query(progressQuery)).disks[0];
          if (d?.state === 'writing' && d.bytesDone >= bytes) return d.bytesDone;
          if (d?.state === 'done') throw new Error(`the disk was done before ${bytes} bytes were seen`);
          await new Promise((r) => setTimeout(r, 200));
        }
        throw new Error(`the write did not pass ${bytes} bytes`);
      };
      const atCut = await past(32 * MiB);
      const cut = await topo.cutLink('proxy02', { peer: 'repo01', forMs: 10_000 });
      const { downMs } = await cut.restored;
      const backAt = Date.now();
      const atBack = (await handle.query(progressQuery)).disks[0].bytesDone;
      const resumedAt = await past(atBack + 1);
      const resumeSeconds = (Date.now() - backAt) / 1000;
      const atRestart = resumedAt;
      mover.kill('SIGKILL');
      await new Promise<void>((r) => (mover.exitCode !== null || mover.signalCode !== null ? r() : mover.once('exit', () => r())));
      await new Promise((r) => setTimeout(r, 2000));
      mover = await startMover();
      const result = (await handle.result()) as VSphereRestoreResult;
      const seconds = (Date.now() - t0) / 1000;
      const sent = topo.linkBytes('repo01').sent - repo0.sent;
      const disk = result.disks[0];
      assert.equal(disk.proxy, 'proxy02');
      assert.equal(disk.workerIdentity, identityOf('proxy02', reader), 'the worker on proxy02 wrote the disk');
      assert.ok(sent >= DISK, `repo01 sent at least the disk over its link (${sent} >= ${DISK}): the reads went through it`);
      const events = await historyEvents(handle);
      assert.deepEqual(writerIdentities(events).at(-1), identityOf('proxy02', reader));
      assertControlOnBackup(events);
      await checkInventoryAndRemove(rpId, result, vmName);
      figures.push(
        `through repo01 (HotAdd on proxy02, ${DISK / MiB} MiB at 8 MB/s): proxy02-repo01 cut at ${(atCut / MiB).toFixed(0)} MiB for ${(downMs / 1000).toFixed(1)} s, ` +
          `progress again ${resumeSeconds.toFixed(1)} s after the link was back; data mover SIGKILLed at ${(atRestart / MiB).toFixed(0)} MiB and restarted 2 s later (${((DISK - atRestart) / MiB).toFixed(0)} MiB still to read); ` +
          `restore ${seconds.toFixed(1)} s; repo01's link out ${(sent / MiB).toFixed(1)} MiB (${(sent / DISK).toFixed(3)} per byte of disk); ` +
          `write attempts ${whoDidWhat(events)
            .activities.filter((a) => a.type === 'writeDisk')
            .map((a) => a.attempt)
            .join(',')}`,
      );
    } finally {
      mover.kill('SIGKILL');
    }
  });
});
