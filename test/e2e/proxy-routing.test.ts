import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WorkflowFailedError, type Client, type WorkflowHandle } from '@temporalio/client';
import { ActivityFailure, ApplicationFailure, defaultPayloadConverter } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { RESTORE_ID_KEY } from '../../src/activities/vsphere';
import { startVSphereRestore } from '../../src/client/restore';
import { FailureType } from '../../src/domain/errors';
import { progressQuery, type RestoreProgress } from '../../src/domain/progress';
import { proxyTaskQueue } from '../../src/domain/task-queues';
import type { VSphereRestoreRequest, VSphereRestoreResult } from '../../src/domain/vsphere';
import { labConfigFile, labProxy, readLabState } from '../../src/lab';
import { createProxyVm } from '../../src/lab/inventory';
import type { VSphereClient } from '../../src/vsphere';
import {
  importRandomThickVm,
  openTestEnv,
  runCli,
  startWorkerProcess,
  type TestEnv,
  type WorkerProcess,
  assertServesNoVSphereProxyQueue,
} from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { historyEvents, type HistoryEvent } from '../helpers/workflow-env';
import { labVSphere, localFlatFile } from '../helpers/vsphere';

/**
 * Disk writes routed to vSphere proxies, each a worker process of its own (`vmrestore worker --proxy NAME`)
 * beside a control worker that serves no proxy queue: spreading, task slots, a proxy lost mid-disk, and
 * a restore with no live proxy.
 */

const MiB = 1024 * 1024;
const PROXY2_VM = 'vmrestore-proxy02';
let env: TestEnv;
let vs: VSphereClient;
let tmp: string;
let control: WorkerProcess | undefined;
const proxies = new Map<string, WorkerProcess>();

/** The lab's configuration with two proxies on it (both see every datastore), and a third that never runs. */
function writeConfig(maxTasks: number): string {
  const lab = readLabState();
  const v = lab.vsphere!;
  const base = labConfigFile(lab);
  const proxy = (name: string, vmName: string) => ({ ...labProxy(v, name, vmName), maxTasks, embeddedWorker: false });
  const file = path.join(tmp, `config-${maxTasks}.json`);
  const config = {
    ...base,
    proxies: [proxy('proxy01', v.proxyVmName), proxy('proxy02', PROXY2_VM), { ...proxy('proxy03', PROXY2_VM), transports: ['nbd'] }],
    verifier: { embeddedWorker: false },
  };
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

async function startControl(configFile: string): Promise<void> {
  await control?.stop();
  control = await startWorkerProcess(env.taskQueue, { VMRESTORE_CONFIG: configFile });
  assertServesNoVSphereProxyQueue(control.output(), env.taskQueue);
}

/** Until a worker polls the proxy's activity queue (it then counts as live). */
async function pollerOf(client: Client, name: string): Promise<string> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    const d = await client.workflowService.describeTaskQueue({
      namespace: env.config.temporal.namespace,
      taskQueue: { name: proxyTaskQueue(env.taskQueue, name), kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
      taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    });
    const p = d.pollers?.find((x) => x.identity?.endsWith(`/vmrestore-proxy-${name}`));
    if (p) return p.identity!;
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`no worker polls the queue of proxy ${name}`);
}

async function startProxy(configFile: string, name: string): Promise<void> {
  const w = await startWorkerProcess(env.taskQueue, { VMRESTORE_CONFIG: configFile }, ['--proxy', name]);
  assert.match(w.output(), new RegExp(`proxy worker \\(${name}\\) polling task queue '${proxyTaskQueue(env.taskQueue, name)}'`));
  proxies.set(name, w);
  await pollerOf(env.client, name);
}

/** Disks of `sizes` MiB of random data, imported as a thick VM; returns its restore point. */
const importVm = (name: string, sizes: number[]): Promise<string> => importRandomThickVm(env.config.repository.path, tmp, name, sizes);

async function restore(rpId: string, vmName: string, extra: Partial<VSphereRestoreRequest>): Promise<WorkflowHandle> {
  return startVSphereRestore(env.client, { restorePointId: rpId, vmName, ...extra }, { taskQueue: env.taskQueue });
}

/** Every restored disk equals its backup; the one VM of the restore is removed afterwards. */
async function checkAndRemove(rpId: string, result: VSphereRestoreResult): Promise<void> {
  const dc = await vs.datacenter('DC0');
  const vms = await vs.findVmsByExtraConfig(dc, RESTORE_ID_KEY, result.restoreId);
  assert.equal(vms.length, 1, 'exactly one VM for the restore');
  const cfg = await vms[0].config();
  for (const d of result.disks) {
    const file = localFlatFile(cfg.disks[d.diskIndex].fileName);
    assert.equal(
      await diskDigest(file),
      await backedUpDiskDigest(env.config.repository.path, rpId, d.diskIndex),
      `disk ${d.diskIndex} bytes`,
    );
  }
  await vms[0].destroy();
}

/** Worker identities that started writeDisk tasks, from the history's started events. */
function writerIdentities(events: HistoryEvent[]): string[] {
  const types = new Map<number, string>();
  for (const e of events) {
    const s = e.activityTaskScheduledEventAttributes;
    if (s) types.set(Number(e.eventId), s.activityType?.name ?? '');
  }
  return events
    .filter(
      (e) =>
        e.activityTaskStartedEventAttributes && types.get(Number(e.activityTaskStartedEventAttributes.scheduledEventId)) === 'writeDisk',
    )
    .map((e) => e.activityTaskStartedEventAttributes!.identity ?? '');
}

/** Most writeDisk tasks running at once, by the times of the history's started and closed events. */
function mostConcurrentWrites(events: HistoryEvent[]): number {
  const ms = (e: HistoryEvent) => Number(e.eventTime?.seconds ?? 0) * 1000 + Math.floor((e.eventTime?.nanos ?? 0) / 1e6);
  const writes = new Set<number>();
  const started = new Map<number, number>();
  const spans: Array<[number, number]> = [];
  for (const e of events) {
    if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'writeDisk') writes.add(Number(e.eventId));
    const s = e.activityTaskStartedEventAttributes;
    if (s && writes.has(Number(s.scheduledEventId))) started.set(Number(e.eventId), ms(e));
    const closed = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes ?? e.activityTaskTimedOutEventAttributes;
    const from = closed ? started.get(Number(closed.startedEventId)) : undefined;
    if (from !== undefined) spans.push([from, ms(e)]);
  }
  // A started event is recorded with its task's end, but carries the time the task started.
  return Math.max(0, ...spans.map(([a, b]) => spans.filter(([c, d]) => c < b && d > a).length));
}

describe('disk writes on proxy workers', { timeout: 900_000 }, () => {
  let twoSlots: string;
  let oneSlot: string;
  before(async () => {
    env = await openTestEnv('proxies');
    vs = await labVSphere(env.config);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-proxies-'));
    // proxy02 is a VM of its own, so HotAdd has somewhere to move a disk.
    const dc = await vs.datacenter('DC0');
    if (!(await vs.findVmByName(dc, PROXY2_VM))) await createProxyVm(vs, 'DC0', PROXY2_VM, env.config.vsphere.profiles.lab.datastore!);
    twoSlots = writeConfig(2);
    oneSlot = writeConfig(1);
    await Promise.all([startControl(twoSlots), startProxy(twoSlots, 'proxy01'), startProxy(twoSlots, 'proxy02')]);
  });
  after(async () => {
    for (const w of proxies.values()) await w.stop();
    await control?.stop();
    await vs?.logout().catch(() => {});
    await env?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('a proxy worker whose configured mount does not exist on its host refuses to start, naming it', async () => {
    const file = path.join(tmp, 'config-missing-mount.json');
    const config = JSON.parse(readFileSync(twoSlots, 'utf8')) as { proxies: Array<{ nasMounts: Record<string, string> }> };
    const missing = path.join(tmp, 'no-such-nfs-mount');
    config.proxies[1].nasMounts = { LocalDS_0: missing };
    writeFileSync(file, JSON.stringify(config));
    const r = await runCli(env.taskQueue, ['worker', '--proxy', 'proxy02'], { VMRESTORE_CONFIG: file });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`proxy 'proxy02': proxies\\[1\\]\\.nasMounts\\.LocalDS_0 is '${missing}', which does not exist on this host`),
    );
    assert.doesNotMatch(r.stdout, /polling task queue/);
  });

  it("spreads one VM's disks over both proxies; the result and the history name each disk's proxy and worker", async () => {
    const rpId = await importVm('spread', [32, 32]);
    const handle = await restore(rpId, `t-spread-${Date.now().toString(36)}`, { transport: 'direct-nas', diskConcurrency: 2 });
    const result = (await handle.result()) as VSphereRestoreResult;
    assert.deepEqual(
      result.disks.map((d) => d.proxy).sort(),
      ['proxy01', 'proxy02'],
      'each proxy wrote one disk, with a slot free on each',
    );
    for (const d of result.disks) assert.match(d.workerIdentity ?? '', new RegExp(`^\\d+@.+/vmrestore-proxy-${d.proxy}$`));
    const identities = writerIdentities(await historyEvents(handle));
    assert.deepEqual(identities.sort(), result.disks.map((d) => d.workerIdentity).sort(), 'the started events show the same two workers');
    await checkAndRemove(rpId, result);
  });

  it('with one task slot per proxy, three disks run two at a time and the third waits in waiting-for-proxy', async () => {
    await startControl(oneSlot);
    const rpId = await importVm('slots', [48, 48, 48]);
    const handle = await restore(rpId, `t-slots-${Date.now().toString(36)}`, {
      transport: 'direct-nas',
      diskConcurrency: 3,
      throttleMBps: 12,
    });
    let seen: RestoreProgress | undefined;
    const deadline = Date.now() + 120_000;
    while (!seen && Date.now() < deadline) {
      const p = await handle.query(progressQuery);
      if (p.phase === 'waiting-for-proxy' && p.disks.some((d) => d.state === 'waiting-for-proxy')) seen = p;
      else await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(seen, 'the progress query showed a disk waiting for a proxy');
    assert.equal(seen.disks.filter((d) => d.state === 'writing').length, 2, `two disks writing meanwhile: ${JSON.stringify(seen.disks)}`);
    assert.match(seen.message ?? '', /every live proxy is busy \(proxy01 1\/1, proxy02 1\/1 tasks\)/);
    const result = (await handle.result()) as VSphereRestoreResult;
    const events = await historyEvents(handle);
    assert.equal(mostConcurrentWrites(events), 2, 'never more than one disk per proxy at once');
    const phases = events.flatMap((e) => {
      const field = e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields?.RestorePhase;
      return field ? [defaultPayloadConverter.fromPayload(field)] : [];
    });
    assert.ok(
      phases.includes('waiting-for-proxy'),
      `the RestorePhase search attribute went through waiting-for-proxy: ${phases.join(', ')}`,
    );
    assert.equal(new Set(result.disks.map((d) => d.proxy)).size, 2);
    await checkAndRemove(rpId, result);
    await startControl(twoSlots);
  });

  it('a proxy SIGKILLed mid-disk: the other proxy finishes the HotAdd disk from its checkpoint, bytes identical, nothing left attached', async () => {
    const rpId = await importVm('failover', [256]);
    const vmName = `t-failover-${Date.now().toString(36)}`;
    const started = Date.now();
    const handle = await restore(rpId, vmName, { transport: 'hotadd', throttleMBps: 24 });
    let writing: string | undefined;
    const deadline = Date.now() + 120_000;
    while (Date.now() < deadline) {
      const p = await handle.query(progressQuery);
      const d = p.disks[0];
      if (d?.state === 'writing' && d.proxy && d.bytesDone >= 64 * MiB) {
        writing = d.proxy;
        break;
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.ok(writing, 'the disk was being written before the kill');
    const killedAt = Date.now();
    await proxies.get(writing)!.kill();
    const result = (await handle.result()) as VSphereRestoreResult;
    const events = await historyEvents(handle);
    const at = (e: HistoryEvent) => Number(e.eventTime?.seconds ?? 0) * 1000 + Math.floor((e.eventTime?.nanos ?? 0) / 1e6);
    const rescheduled = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'writeDisk')[1];
    assert.ok(rescheduled, 'a second disk write was scheduled');
    const survivor = writing === 'proxy01' ? 'proxy02' : 'proxy01';
    const disk = result.disks[0];
    console.log(
      `failover figures: killed ${writing} at ${((killedAt - started) / 1000).toFixed(1)} s, restore done at ${((Date.now() - started) / 1000).toFixed(1)} s, ` +
        `the disk went to ${survivor} ${((at(rescheduled) - killedAt) / 1000).toFixed(1)} s after the kill and resumed at ${(disk.resumedFromOffset / MiB).toFixed(0)} MiB`,
    );
    assert.equal(disk.proxy, survivor, 'the surviving proxy finished the disk');
    assert.deepEqual(disk.failedOver, [writing]);
    assert.ok(disk.resumedFromOffset > 0, 'continued from the lost proxy’s checkpoint, not from zero');
    const dc = await vs.datacenter('DC0');
    for (const name of [readLabState().vsphere!.proxyVmName, PROXY2_VM]) {
      const pvm = await vs.findVmByName(dc, name);
      const left = (await pvm!.attachedDiskFiles()).filter((f) => f.includes(vmName));
      assert.deepEqual(left, [], `nothing of ${vmName} attached to ${name}`);
    }
    const attaches = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'attachToProxy').length;
    const detaches = events.filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'detachFromProxy').length;
    assert.equal(attaches, 2, 'attached to the lost proxy, then to the survivor');
    assert.equal(detaches, 2, 'detached from each');
    await checkAndRemove(rpId, result);
    await startProxy(twoSlots, writing);
  });

  it('with no live proxy the disk waits in waiting-for-proxy, then the restore fails after the limit and removes its VM', async () => {
    const rpId = await importVm('noproxy', [8]);
    const vmName = `t-noproxy-${Date.now().toString(36)}`;
    const handle = await restore(rpId, vmName, { transport: 'nbd', proxy: 'proxy03', proxyWaitSeconds: 8 });
    let phase: string | undefined;
    const deadline = Date.now() + 60_000;
    while (phase !== 'waiting-for-proxy' && Date.now() < deadline) {
      phase = (await handle.query(progressQuery)).phase;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(phase, 'waiting-for-proxy');
    const err = await handle.result().then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(err instanceof WorkflowFailedError, `the restore failed: ${String(err)}`);
    const cause = err.cause instanceof ActivityFailure ? err.cause.cause : err.cause;
    assert.ok(cause instanceof ApplicationFailure);
    assert.equal(cause.type, FailureType.NoProxyAvailable);
    assert.match(cause.message, /no worker polls the task queue of proxy 'proxy03' for 8 s/);
    const progress = await handle.query(progressQuery);
    assert.equal(progress.phase, 'failed');
    const dc = await vs.datacenter('DC0');
    assert.equal(await vs.findVmByName(dc, vmName), null, 'compensation removed the VM');
  });
});
