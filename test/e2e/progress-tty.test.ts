import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { labVSphere } from '../helpers/vsphere';
import { openTestEnv, ROOT, startWorkerProcess, type TestEnv, type WorkerProcess, runCli } from '../helpers/env';
import type { DiskProgress } from '../../src/domain/progress';

const run = promisify(execFile);
const CLI = path.join(ROOT, 'bin', 'vmrestore.cjs');
let env: TestEnv;
let worker: WorkerProcess;
const vms: string[] = [];
// A tmux server of its own, so the test neither sees nor disturbs anyone's sessions.
const TMUX = ['-L', `vmrestore-progress-${process.pid}`];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const cliEnv = () => ({ ...process.env, VMRESTORE_TASK_QUEUE: env.taskQueue });

/** The vmrestore CLI against the lab on the test's task queue: exit code and output. */
const cli = (...args: string[]) => runCli(env.taskQueue, args);

async function tmux(...args: string[]): Promise<string> {
  return (await run('tmux', [...TMUX, ...args], { env: cliEnv() })).stdout;
}

/** A restore of demo-thick's two disks (1 GiB + 256 MiB) over NBD, slowed so it can be watched for ~20 s. */
function restoreArgs(vmName: string, mbps = 50): string[] {
  vms.push(vmName);
  return [
    'restore',
    'vsphere',
    '--restore-point',
    env.demo['demo-thick'],
    '--vm-name',
    vmName,
    '--transport',
    'nbd',
    '--throttle-mbps',
    String(mbps),
  ];
}

/** The percentages the screen's bar rows show, by disk. */
function barPercents(screen: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const m of screen.matchAll(/^(disk\d+) [█░]+ +(\d+)% \|/gm)) out.set(m[1], Number(m[2]));
  return out;
}

describe('live restore progress (terminal bars, plain lines, status)', () => {
  before(async () => {
    env = await openTestEnv('progress');
    worker = await startWorkerProcess(env.taskQueue);
  });
  after(async () => {
    await tmux('kill-server').catch(() => undefined);
    await worker?.stop();
    if (env) {
      const vs = await labVSphere(env.config);
      const dc = await vs.datacenter('DC0');
      for (const name of vms) await (await vs.findVmByName(dc, name).catch(() => undefined))?.destroy();
      await env.close();
    }
  });

  it('restore --wait in a terminal draws per-disk bars that advance and end at 100%', async () => {
    const vmName = `t-tty-${Date.now().toString(36)}`;
    const command = [process.execPath, CLI, ...restoreArgs(vmName), '--wait'].join(' ');
    await tmux('new-session', '-d', '-x', '150', '-y', '30', '-s', 'restore', '-c', ROOT, `${command}; echo "exit=$?"; sleep 600`);

    const screens: string[] = [];
    const deadline = Date.now() + 120_000;
    let screen = '';
    while (Date.now() < deadline) {
      screen = await tmux('capture-pane', '-p', '-t', 'restore');
      screens.push(screen);
      if (/^exit=\d+/m.test(screen)) break;
      await sleep(250);
    }
    assert.match(screen, /^exit=0$/m, `the restore ended well:\n${screen}`);

    // During the restore: both disks as bars, each seen part-way with throughput and ETA.
    const seen = new Map<string, number[]>();
    for (const s of screens)
      for (const [disk, pct] of barPercents(s)) if (pct > 0 && pct < 100) seen.set(disk, [...(seen.get(disk) ?? []), pct]);
    assert.deepEqual([...seen.keys()].sort(), ['disk0', 'disk1'], `bars of both disks part-way:\n${screens.join('\n----\n')}`);
    const root = [...new Set(seen.get('disk0'))];
    assert.ok(root.length >= 3, `disk0's bar advanced through several values: ${root.join(', ')}`);
    assert.deepEqual(
      root,
      [...root].sort((a, b) => a - b),
      'the bar only moves forward',
    );
    const live = screens.find((s) =>
      /^disk0 [█░]+ +\d+% \| +[\d.]+ MiB \/ 1\.00 GiB \| +[\d.]+ MB\/s \| ETA (\d+m)?\d+s +\| writing \(nbd\)/m.test(s),
    );
    assert.ok(live, `a screen showed disk0 writing with throughput and ETA:\n${screens.slice(-3).join('\n----\n')}`);
    assert.ok(
      screens.some((s) => /^writing-disks$/m.test(s)),
      'the phase stands above the bars',
    );

    // The final screen: completed, both bars full, no bar drawn twice.
    assert.match(screen, /^completed$/m);
    assert.deepEqual(Object.fromEntries(barPercents(screen)), { disk0: 100, disk1: 100 }, screen);
    assert.equal(screen.match(/^disk0 /gm)?.length, 1, `one bar per disk on the final screen:\n${screen}`);
    assert.match(screen, /^disk0 .*\| +1\.00 GiB \/ 1\.00 GiB \|.*done \(nbd\)$/m);
  });

  it('status of a running restore reports throughput and ETA per disk; the Web UI details show them too', async () => {
    const vmName = `t-st-${Date.now().toString(36)}`;
    // 20 MB/s: disk0 writes for ~50 s, time enough for a few CLI runs on a busy machine.
    const started = await cli(...restoreArgs(vmName, 20), '--json');
    assert.equal(started.code, 0, started.stderr);
    const { workflowId } = JSON.parse(started.stdout.trim()) as { workflowId: string };
    const handle = env.client.workflow.getHandle(workflowId);
    const writingRow = /\| 0 \| root \| nbd \| writing \| \d+ \/ 1024 MiB \| \d+% \| [\d.]+ MB\/s \| (\d+m)?\d+s \|/;

    // The Web UI's current details (the SDK's metadata query) carry the figures, from the writer's reports.
    let details = '';
    for (let i = 0; i < 120 && !writingRow.test(details); i++) {
      if (i > 0) await sleep(250);
      details = ((await handle.query('__temporal_workflow_metadata')) as { currentDetails?: string }).currentDetails ?? '';
    }
    assert.match(details, /\| disk \| label \| transport \| state \| written \| % \| throughput \| ETA \|/);
    assert.match(details, writingRow, details);

    // Both forms of `status` side by side, while disk0 is still writing (the CLI is slow to start on a busy machine).
    type Row = DiskProgress & { bytesPerSecond?: number; etaSeconds?: number };
    let text = '';
    let st: { status: string; disks: Row[] } | undefined;
    for (let i = 0; i < 10; i++) {
      const [t, j] = await Promise.all([cli('status', workflowId), cli('status', workflowId, '--json')]);
      assert.equal(t.code, 0, t.stderr);
      assert.equal(j.code, 0, j.stderr);
      text = t.stdout;
      st = JSON.parse(j.stdout.trim()) as { status: string; disks: Row[] };
      const row = st.disks.find((d) => d.diskIndex === 0);
      if (st.status !== 'RUNNING' || (/disk 0 root \[nbd on lab-proxy\] writing .*MB\/s/.test(text) && (row?.bytesPerSecond ?? 0) > 0))
        break;
    }
    assert.match(text, /disk 0 root \[nbd on lab-proxy\] writing [\d.]+ MiB \/ 1\.00 GiB \(\d+%, [\d.]+ MB\/s, ETA (\d+m)?\d+s\)/, text);
    assert.ok(st);
    assert.equal(st.status, 'RUNNING', 'the restore is still running while we look');
    const live = st.disks.find((d) => d.diskIndex === 0);
    assert.ok(
      live && live.state === 'writing' && (live.bytesPerSecond ?? 0) > 0,
      `disk0 writing with a throughput: ${JSON.stringify(live)}`,
    );
    // Throttled to 20 MB/s: the measured rate stays under twice that, and the ETA is what is left at that rate.
    const mbps = live.bytesPerSecond! / 1e6;
    assert.ok(mbps > 1 && mbps < 40, `throughput ${mbps.toFixed(1)} MB/s, throttled to 20 MB/s`);
    const expected = (live.bytesTotal - live.bytesDone) / live.bytesPerSecond!;
    assert.ok(Math.abs(live.etaSeconds! - expected) <= 1, `ETA ${live.etaSeconds} s, expected ${expected.toFixed(1)} s`);
    const result = await env.client.workflow.getHandle(workflowId).result();
    assert.equal((result as { vmName: string }).vmName, vmName);
    // Progress reports are bounded: at most one per 4% of a disk (plus the first), whatever its size.
    const history = await env.client.workflow.getHandle(workflowId).fetchHistory();
    const signals = (history.events ?? []).filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'diskProgress');
    assert.ok(signals.length >= 3 && signals.length <= 2 * 26, `${signals.length} progress signals in history`);
  });

  it('without a terminal: plain lines with percent, throughput and ETA; --json prints the same one object as before', async () => {
    const vmName = `t-pl-${Date.now().toString(36)}`;
    const jsonVm = `t-js-${Date.now().toString(36)}`;
    const plain = await cli(...restoreArgs(vmName, 200), '--wait');
    const json = await cli(...restoreArgs(jsonVm, 1000), '--wait', '--json');
    assert.equal(plain.code, 0, plain.stderr + plain.stdout);
    assert.ok(!plain.stdout.includes('\u001b['), `no escape sequences in piped output:\n${plain.stdout}`);
    const lines = plain.stdout.trim().split('\n');
    assert.match(lines[0], /^started restore-vsphere-t-pl-/);
    assert.ok(
      lines.some((l) => /^writing-disks: disk0\[nbd\] [\d.]+ MiB\/1\.00 GiB \d+% [\d.]+ MB\/s ETA (\d+m)?\d+s, disk1\[nbd\] /.test(l)),
      `a line with disk0's throughput and ETA:\n${plain.stdout}`,
    );
    assert.ok(
      lines.some((l) => /^completed: disk0\[nbd\] 1\.00 GiB\/1\.00 GiB 100% done, disk1\[nbd\] 256\.0 MiB\/256\.0 MiB 100% done$/.test(l)),
    );
    assert.equal(new Set(lines).size, lines.length, 'a line is printed only when it changes');

    assert.equal(json.code, 0, json.stderr + json.stdout);
    const outLines = json.stdout.trim().split('\n');
    assert.equal(outLines.length, 1, `--json prints one line:\n${json.stdout}`);
    const out = JSON.parse(outLines[0]) as Record<string, unknown>;
    assert.deepEqual(Object.keys(out), ['workflowId', 'status', 'phase', 'result']);
    assert.equal(out.status, 'COMPLETED');
    assert.equal(out.phase, 'completed');
    assert.equal((out.result as { disks: unknown[] }).disks.length, 2);
  });

  it('restore azure --wait in a terminal draws the upload bar to completion', async () => {
    const vmName = `ttty${Date.now().toString(36).slice(-7)}`;
    const child = spawn(
      'tmux',
      [
        ...TMUX,
        'new-session',
        '-d',
        '-x',
        '150',
        '-y',
        '30',
        '-s',
        'azure',
        '-c',
        ROOT,
        `${[process.execPath, CLI, 'restore', 'azure', '--restore-point', env.demo['demo-linux'], '--vm-name', vmName, '--wait'].join(' ')}; echo "exit=$?"; sleep 600`,
      ],
      { env: cliEnv(), stdio: 'ignore' },
    );
    await new Promise((r) => child.once('exit', r));
    let screen = '';
    let sawUpload = false;
    const deadline = Date.now() + 150_000;
    while (Date.now() < deadline) {
      screen = await tmux('capture-pane', '-p', '-t', 'azure');
      sawUpload ||= /^uploading$/m.test(screen) && /^disk0 [█░]+ +\d+% \|/m.test(screen);
      if (/^exit=\d+/m.test(screen)) break;
      await sleep(250);
    }
    assert.match(screen, /^exit=0$/m, screen);
    assert.ok(sawUpload, 'the upload showed as a bar under its phase');
    assert.match(screen, /^completed$/m);
    assert.deepEqual(Object.fromEntries(barPercents(screen)), { disk0: 100 }, screen);
  });
  it('plan start --wait in a terminal draws one live bar per VM, then the plan table', async () => {
    const uid = Date.now().toString(36);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-plan-tty-'));
    const file = path.join(dir, 'plan.yaml');
    const names = [`tp1-${uid}`, `tp2-${uid}`];
    vms.push(...names);
    // demo-thick (1 GiB + 256 MiB, partly holes) at 20 MB/s: each VM writes for several seconds, both at once.
    writeFileSync(
      file,
      [
        `name: tty-${uid}`,
        'defaults:',
        '  vsphere:',
        '    datastore: LocalDS_0',
        '    throttleMBps: 20',
        'groups:',
        '  - name: web',
        '    vms:',
        ...names.map((n) => `      - { restorePointId: ${env.demo['demo-thick']}, vmName: ${n} }`),
        '',
      ].join('\n'),
    );
    try {
      const command = [process.execPath, CLI, 'plan', 'start', file, '--wait'].join(' ');
      await tmux('new-session', '-d', '-x', '160', '-y', '30', '-s', 'plan', '-c', ROOT, `${command}; echo "exit=$?"; sleep 600`);
      const screens: string[] = [];
      const deadline = Date.now() + 240_000;
      let screen = '';
      while (Date.now() < deadline) {
        screen = await tmux('capture-pane', '-p', '-t', 'plan');
        screens.push(screen);
        if (/^exit=\d+/m.test(screen)) break;
        await sleep(250);
      }
      assert.match(screen, /^exit=0$/m, `the plan ended well:\n${screen}`);
      const rows = (s: string) => {
        const out = new Map<string, number>();
        for (const m of s.matchAll(/^g1 (tp\d-\S+) +[█░]+ +(\d+)% \|/gm)) out.set(m[1], Number(m[2]));
        return out;
      };
      // While it ran: both VMs as bars under the plan's phase, each seen part-way.
      const partWay = new Set<string>();
      for (const s of screens) for (const [vm, pct] of rows(s)) if (pct > 0 && pct < 100) partWay.add(vm);
      assert.deepEqual([...partWay].sort(), names, `both VMs' bars part-way:\n${screens.slice(-4).join('\n----\n')}`);
      assert.ok(
        screens.some((s) => /^plan tty-\S+: running group 1 of 1/m.test(s)),
        `the plan's phase stands above the bars:\n${screens.slice(-2).join('\n----\n')}`,
      );
      // The end: both bars full, drawn once each, then the plain table below them.
      assert.deepEqual(Object.fromEntries(rows(screen)), Object.fromEntries(names.map((n) => [n, 100])), screen);
      for (const n of names) assert.equal(screen.match(new RegExp(`^g1 ${n} `, 'gm'))?.length, 1, screen);
      for (const n of names) assert.match(screen, new RegExp(`${n}.*completed`), screen);
    } finally {
      await tmux('kill-session', '-t', 'plan').catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
