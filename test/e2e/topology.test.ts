import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readlinkSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultPayloadConverter } from '@temporalio/common';
import type { WorkflowHandle } from '@temporalio/client';
import { buildDataDiskImage } from '../../src/lab/demo';
import { readLabState } from '../../src/lab';
import { startVSphereRestore } from '../../src/client/restore';
import { RESTORE_ID_KEY } from '../../src/activities/vsphere';
import type { DiskCheckpoint, TransportMode, VSphereRestoreResult } from '../../src/domain/vsphere';
import type { VSphereClient } from '../../src/vsphere';
import { importTestVm, openTestEnv, ROOT, type TestEnv, type WorkerProcess } from '../helpers/env';
import { backedUpDiskDigest, diskDigest } from '../helpers/disk-digest';
import { labVSphere, localFlatFile } from '../helpers/vsphere';
import { processTreeIo } from '../helpers/proc-io';
import { buildTopology, leftovers, noTopology, running, type Topology } from '../helpers/topology';

const MiB = 1024 * 1024;
const DISK_BYTES = 192 * MiB;
let env: TestEnv;
let vs: VSphereClient;
let topo: Topology;
let rpId: string;
let tmp: string;
let expectedHash: string;
const figures: string[] = [];

/** The network namespace a process runs in, as the kernel names it (net:[inode]). */
function netnsOf(pid: number): string {
  return readlinkSync(`/proc/${pid}/ns/net`);
}

/** Who started each activity and workflow task, from the history. */
async function identities(handle: WorkflowHandle): Promise<{ activities: string[]; workflowTasks: string[]; attempts: number[] }> {
  const events = (await handle.fetchHistory()).events ?? [];
  return {
    activities: events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.identity ?? ''),
    workflowTasks: events
      .filter((e) => e.workflowTaskStartedEventAttributes)
      .map((e) => e.workflowTaskStartedEventAttributes!.identity ?? ''),
    attempts: events.filter((e) => e.activityTaskStartedEventAttributes).map((e) => e.activityTaskStartedEventAttributes!.attempt ?? 1),
  };
}

/** The disk is the backup byte for byte, the restore made exactly one VM, and no snapshot remains. */
async function checkRestoredVm(result: VSphereRestoreResult, transport: TransportMode): Promise<void> {
  assert.equal(result.disks[0].transport, transport, 'transport recorded');
  const dc = await vs.datacenter('DC0');
  const vms = await vs.findVmsByExtraConfig(dc, RESTORE_ID_KEY, result.restoreId);
  assert.equal(vms.length, 1, 'exactly one VM for the restore');
  const file = localFlatFile((await vms[0].config()).disks[0].fileName);
  assert.equal(await diskDigest(file), expectedHash, `disk bytes (${file}) equal the backup`);
  assert.deepEqual(await vms[0].snapshots(), [], 'no restore snapshot remains');
  await vms[0].destroy();
}

interface WriteSeen {
  checkpoint: DiskCheckpoint;
  attempt: number;
  heartbeatAt: number;
}

/** The disk write's last heartbeat as the server holds it, or undefined while there is none. */
async function pendingWrite(handle: WorkflowHandle): Promise<WriteSeen | undefined> {
  const desc = await handle.describe();
  const pa = desc.raw.pendingActivities?.find((a) => a.activityType?.name === 'writeDisk');
  const payload = pa?.heartbeatDetails?.payloads?.[0];
  if (!pa || !payload) return undefined;
  const t = pa.lastHeartbeatTime;
  return {
    checkpoint: defaultPayloadConverter.fromPayload(payload) as DiskCheckpoint,
    attempt: pa.attempt ?? 1,
    heartbeatAt: t ? Number(t.seconds ?? 0) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : 0,
  };
}

async function until<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  while (Date.now() < deadline) {
    last = await probe();
    if (last !== undefined) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} not seen in ${timeoutMs} ms`);
}

describe('hosts for real: backup, repo01, proxy01, proxy02 as network namespaces', { skip: noTopology() }, () => {
  before(async () => {
    env = await openTestEnv('topology');
    vs = await labVSphere(env.config);
    tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-topology-'));
    buildDataDiskImage(path.join(tmp, 'disk0.img'), DISK_BYTES, [[0, DISK_BYTES]], `topology-${Date.now()}`);
    rpId = await importTestVm(env.config.repository.path, tmp, {
      name: 'topology-vm',
      disks: [{ path: 'disk0.img', provisioning: 'thick' }],
    });
    expectedHash = await backedUpDiskDigest(env.config.repository.path, rpId, 0);
    const t0 = Date.now();
    topo = await buildTopology();
    figures.push(`topology of ${topo.hosts.join(', ')} on ${topo.subnet} built in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  });
  after(async () => {
    await topo?.teardown();
    await vs?.logout().catch(() => {});
    await env?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
    console.log(`topology figures:\n  ${figures.join('\n  ')}`);
  });

  it('a restore whose only worker runs on proxy01 completes there with proxy01’s config, byte for byte, its data across proxy01’s link', async () => {
    // proxy01 offers only NBD: the plan that `auto` makes there shows the worker read proxy01's own config.
    const nbdOnly = topo.hostConfig('proxy01', (c) => ({
      ...c,
      proxies: (c.proxies as Record<string, unknown>[]).map((p) => ({ ...p, transports: ['nbd'] })),
    }));
    const worker = await topo.startWorker('proxy01', env.taskQueue, nbdOnly);
    try {
      const proxy01Netns = `net:[${statSync(`/run/netns/${topo.netns('proxy01')}`).ino}]`;
      assert.equal(netnsOf(worker.child.pid!), proxy01Netns, 'the worker runs in proxy01’s namespace');
      assert.notEqual(netnsOf(worker.child.pid!), netnsOf(process.pid), 'not in the backup (root) namespace');
      const link0 = topo.linkBytes('proxy01');
      const t0 = Date.now();
      const handle = await startVSphereRestore(
        env.client,
        { restorePointId: rpId, vmName: `t-topo-${Date.now().toString(36)}`, transport: 'auto' },
        { taskQueue: env.taskQueue },
      );
      const result = await handle.result();
      const seconds = (Date.now() - t0) / 1000;
      const link = topo.linkBytes('proxy01');
      const sent = link.sent - link0.sent;
      const who = await identities(handle);
      assert.ok(who.activities.length > 0 && who.workflowTasks.length > 0, 'the history has started tasks');
      for (const id of [...who.activities, ...who.workflowTasks])
        assert.match(id, /^\d+@proxy01(\/vmrestore-proxy-lab-proxy)?$/, 'every task ran on proxy01');
      assert.ok(
        who.activities.some((id) => id.startsWith(`${worker.child.pid}@proxy01`)),
        `the worker process ${worker.child.pid} started the activities`,
      );
      // NBD sends the whole extent to vcsim, which listens only in the backup namespace.
      assert.ok(sent >= DISK_BYTES, `proxy01 sent at least the disk over its link (${sent} >= ${DISK_BYTES})`);
      await checkRestoredVm(result, 'nbd');
      figures.push(
        `restore on proxy01 (NBD, ${DISK_BYTES / MiB} MiB): ${seconds.toFixed(1)} s; proxy01's link carried ${(sent / MiB).toFixed(1)} MiB out ` +
          `(${(sent / DISK_BYTES).toFixed(3)} per byte of disk), ${((link.received - link0.received) / MiB).toFixed(1)} MiB in; identity ${who.activities[0]}`,
      );
    } finally {
      await worker.stop();
    }
  });

  for (const transport of ['nbd', 'direct-nas'] as const) {
    it(`proxy01’s link cut for 10 s in the middle of a ${transport} disk write: the write resumes when it is back, byte for byte, one VM, no snapshot`, async () => {
      const throttleMBps = 16;
      const worker: WorkerProcess = await topo.startWorker('proxy01', env.taskQueue);
      try {
        const link0 = topo.linkBytes('proxy01');
        const t0 = Date.now();
        const handle = await startVSphereRestore(
          env.client,
          { restorePointId: rpId, vmName: `t-topo-cut-${Date.now().toString(36)}`, transport, throttleMBps },
          { taskQueue: env.taskQueue },
        );
        // The test's client talks to Temporal on loopback, not through proxy01's link: it sees the server's view.
        const atCut = await until(`a ${transport} write past 96 MiB`, 120_000, async () => {
          const w = await pendingWrite(handle);
          return w && w.checkpoint.bytes >= 96 * MiB ? w : undefined;
        });
        const cut = await topo.cutLink('proxy01', { forMs: 10_000 });
        const { downMs } = await cut.restored;
        const back = Date.now();
        // What the worker wrote until then (the attempt cut off goes on writing to the NAS mount meanwhile).
        const writtenBeforeBack = processTreeIo(worker.child.pid!).wchar;
        // A heartbeat that reached the server after the link came back: the worker is writing again.
        const resumed = await until('a heartbeat after the link came back', 120_000, async () => {
          const w = await pendingWrite(handle);
          return w && w.heartbeatAt > back ? w : undefined;
        });
        const resumeSeconds = (resumed.heartbeatAt - back) / 1000;
        const result = await handle.result();
        const seconds = (Date.now() - t0) / 1000;
        const sent = topo.linkBytes('proxy01').sent - link0.sent;
        // What the worker process tree really wrote (files and sockets), counted by the kernel.
        const written = processTreeIo(worker.child.pid!).wchar;
        assert.equal(worker.child.exitCode, null, 'the worker lived through the cut');
        const who = await identities(handle);
        for (const id of who.activities) assert.match(id, /^\d+@proxy01(\/vmrestore-proxy-lab-proxy)?$/, 'every activity ran on proxy01');
        const retried = who.attempts.some((a) => a >= 2);
        await checkRestoredVm(result, transport);
        const writtenAfterBack = written - writtenBeforeBack;
        if (transport === 'direct-nas') {
          // The disk is written on proxy01's NAS mount. Cut off, the first attempt goes on writing, but the
          // server holds its checkpoint from before the cut: the retry resumes there, so after the link is
          // back the worker writes the rest from that checkpoint, plus a checkpoint interval, a second of
          // heartbeat lag and the first attempt's last second (until its heartbeat learns it was replaced).
          const rest = DISK_BYTES - atCut.checkpoint.offset;
          const bound = rest + env.config.restore.checkpointBytes + 2 * throttleMBps * 1_000_000 + 8 * MiB;
          assert.ok(
            writtenAfterBack <= bound && writtenAfterBack < DISK_BYTES,
            `after the link was back the worker wrote ${writtenAfterBack} bytes <= ${bound} (< the disk, ${DISK_BYTES}): it resumed, it did not start over`,
          );
        } else {
          // The datastore file API replaces the whole file per PUT: a retried NBD write sends it again.
          assert.ok(sent >= DISK_BYTES, `proxy01 sent at least the disk over its link (${sent} >= ${DISK_BYTES})`);
        }
        figures.push(
          `${transport} write cut at ${(atCut.checkpoint.bytes / MiB).toFixed(0)} MiB for ${(downMs / 1000).toFixed(1)} s: ` +
            `first heartbeat ${resumeSeconds.toFixed(1)} s after the link was back (attempt ${resumed.attempt}, ${retried ? 'retried after the heartbeat timeout' : 'same attempt'}); ` +
            `restore ${seconds.toFixed(1)} s at ${throttleMBps} MB/s; link out ${(sent / MiB).toFixed(1)} MiB; the worker wrote ` +
            `${(written / MiB).toFixed(1)} MiB for a ${DISK_BYTES / MiB} MiB disk, ${(writtenAfterBack / MiB).toFixed(1)} MiB of it after the link was back ` +
            `(it reports resuming at ${(result.disks[0].resumedFromOffset / MiB).toFixed(0)} MiB)`,
        );
      } finally {
        await worker.stop();
      }
    });
  }

  it('a cut between proxy02 and repo01 stalls only their traffic, and it flows again when the link is back', async () => {
    const repo = topo.address('repo01');
    const size = 32 * MiB;
    // repo01 serves 32 MiB in 1 MiB pieces every 50 ms: about 1.6 s uncut.
    const server = topo.spawn('repo01', process.execPath, [
      '-e',
      `require('node:http').createServer((q, s) => { s.writeHead(200, { 'content-length': '${size}' }); let n = 0; ` +
        `const t = setInterval(() => { s.write(Buffer.alloc(${MiB}, 7)); if (++n === ${size / MiB}) { clearInterval(t); s.end(); } }, 50); })` +
        `.listen(8080, '${repo}', () => console.log('serving'))`,
    ]);
    try {
      await new Promise<void>((resolve, reject) => {
        server.stdout!.once('data', () => resolve());
        server.once('exit', (code) => reject(new Error(`server on repo01 exited with ${code}`)));
      });
      const download = (host: string) =>
        topo.exec(host, process.execPath, [
          '-e',
          `require('node:http').get('http://${repo}:8080/', (r) => { let n = 0; r.on('data', (d) => (n += d.length)); r.on('end', () => console.log(n)); })` +
            `.on('error', (e) => { console.error(e.message); process.exit(1); })`,
        ]);
      const stalled = download('proxy02');
      await new Promise((r) => setTimeout(r, 300));
      const cut = await topo.cutLink('proxy02', { peer: 'repo01', forMs: 5000 });
      // During the cut proxy02 still reaches backup, and proxy01 still reaches repo01.
      const toBackup = await topo.exec('proxy02', process.execPath, ['-e', connectScript(topo.address('backup'), topo.forwardedPorts[0])]);
      assert.equal(toBackup.code, 0, `proxy02 reaches backup during the cut: ${toBackup.stderr}`);
      const other = await download('proxy01');
      assert.equal(other.stdout.trim(), String(size), `proxy01 downloads from repo01 during the cut: ${other.stderr}`);
      const toRepo = await topo.exec('proxy02', process.execPath, ['-e', connectScript(repo, 8080)]);
      assert.notEqual(toRepo.code, 0, 'a new connection from proxy02 to repo01 fails during the cut');
      const { downMs } = await cut.restored;
      const r = await stalled;
      assert.equal(r.stdout.trim(), String(size), `the cut download completed after the link was back: ${r.stderr}`);
      assert.ok(r.seconds * 1000 >= downMs, `the download (${r.seconds.toFixed(1)} s) stalled through the ${downMs} ms cut`);
      figures.push(
        `32 MiB from repo01 to proxy02 with a ${(downMs / 1000).toFixed(1)} s cut between them: ${r.seconds.toFixed(1)} s (proxy01's uncut copy meanwhile: ${other.seconds.toFixed(1)} s)`,
      );
    } finally {
      server.kill('SIGKILL');
    }
  });

  it('teardown leaves no namespace, link, forwarder or process behind, and may run twice', async () => {
    const inNamespaces = topo.hosts.filter((h) => h !== 'backup').flatMap((h) => topo.pids(h));
    assert.ok(inNamespaces.length >= 3, `forwarders run in the namespaces (${inNamespaces.join(', ')})`);
    const bridgeAddress = topo.address('backup');
    const port = topo.forwardedPorts[0];
    const t0 = Date.now();
    await topo.teardown();
    figures.push(`teardown in ${((Date.now() - t0) / 1000).toFixed(2)} s`);
    await topo.teardown();
    assert.deepEqual(leftovers(process.pid), { netns: [], links: [] }, 'no namespace or link of this run');
    const { stdout: netnsList } = await run('ip', ['netns', 'list']);
    assert.ok(!netnsList.includes(`vmrestore-${process.pid}-`), `ip netns list shows none of ours:\n${netnsList}`);
    const { stdout: links } = await run('ip', ['-o', 'link', 'show']);
    assert.ok(!new RegExp(`\\bvmr${process.pid}\\b`).test(links), `ip link shows no bridge or veth of ours:\n${links}`);
    for (const pid of inNamespaces) assert.equal(running(pid), false, `process ${pid} of a namespace is gone`);
    // The backup side's forwarder listened on the bridge's address, which is gone with the bridge (a probe
    // of it would leave the machine by its default route, so the address table is read instead).
    const { stdout: addrs } = await run('ip', ['-4', '-o', 'addr', 'show']);
    assert.ok(!addrs.includes(`inet ${bridgeAddress}/`), `the bridge address ${bridgeAddress} is gone:\n${addrs}`);
    assert.ok(port > 0, 'a port was forwarded');
  });

  it('a run killed with SIGKILL leaves namespaces that the next build removes; a run that exits without teardown leaves none', async () => {
    const temporalPort = readLabState().temporal!.port;
    const killed = await childTopology(temporalPort, 'hold');
    const left = leftovers(killed);
    assert.equal(left.netns.length, 1, `the killed run left its namespace (${JSON.stringify(left)})`);
    const t0 = Date.now();
    const again = await buildTopology({ hosts: ['proxy01'], ports: [temporalPort] });
    const rebuildSeconds = (Date.now() - t0) / 1000;
    try {
      assert.deepEqual(leftovers(killed), { netns: [], links: [] }, 'the next build removed what the killed run left');
    } finally {
      await again.teardown();
    }
    const exited = await childTopology(temporalPort, 'exit');
    assert.deepEqual(leftovers(exited), { netns: [], links: [] }, 'a run that exits removes its topology on the way out');
    figures.push(`a build that first removes a killed run's topology: ${rebuildSeconds.toFixed(1)} s`);
  });
});

/** A `node -e` script that exits 0 once a TCP connection to host:port opens, 1 on error or after 2 s. */
function connectScript(host: string, port: number): string {
  return `const s = require('node:net').connect({ host: '${host}', port: ${port}, timeout: 2000 }, () => { s.destroy(); process.exit(0); }); s.on('timeout', () => process.exit(1)); s.on('error', () => process.exit(1));`;
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; stdout: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.once('close', (code) => resolve({ code, stdout }));
  });
}

/**
 * A process that builds a one-host topology, then either holds it until SIGKILLed or exits without
 * calling teardown. Resolves with its pid once it is gone.
 */
async function childTopology(port: number, mode: 'hold' | 'exit'): Promise<number> {
  const script =
    `require(${JSON.stringify(path.join(ROOT, 'test', 'helpers', 'topology.ts'))}).buildTopology({ hosts: ['proxy01'], ports: [${port}] })` +
    `.then(() => { console.log('built'); ${mode === 'exit' ? 'process.exit(0);' : 'setInterval(() => {}, 1000);'} }, (e) => { console.error(e); process.exit(1); })`;
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const gone = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`child topology not built in 120 s:\n${out}`)), 120_000);
    child.stdout.on('data', () => {
      if (out.includes('built')) {
        clearTimeout(t);
        resolve();
      }
    });
    void gone.then((code) => {
      clearTimeout(t);
      if (!out.includes('built')) reject(new Error(`child topology exited with ${code}:\n${out}`));
    });
  });
  if (mode === 'hold') child.kill('SIGKILL');
  const code = await gone;
  if (mode === 'exit') assert.equal(code, 0, `the child exited cleanly:\n${out}`);
  return child.pid!;
}
