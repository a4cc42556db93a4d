import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ensureGuestImage } from '../src/lab/guests';
import { BOOT_FILES, CLUSTER_TEST } from './suites';

/**
 * `npm test`: the three layers of tests, each file in its own `node --test` process, spread over
 * lanes that each own a lab (Temporal, vcsim, Azurite, the ARM simulator):
 * - test/unit: no process at all (test/helpers/no-process.ts makes starting one throw), no lab;
 * - test/integration: one peer or tool at a time (vcsim, Azurite, the ARM simulator, a Temporal dev
 *   server, qemu-img, debugfs, sfdisk, FUSE ...);
 * - test/e2e: whole restores on the lab.
 * The summary gives each layer's seconds. The qemu boots of one lane
 * (CPU-bound) overlap with the restores of the other (mostly waiting on timers, heartbeats and
 * restarts), and a test that restarts its lab's Temporal server disturbs only its own lane.
 *
 * A file's whole output is printed when it ends, so the lanes never interleave; a summary with every
 * file's time follows. `npm test -- <files>` runs only those files; VMRESTORE_TEST_LANES=1 runs
 * everything in one lane on the default lab. The Temporal cluster's own test is left to
 * `npm run test:cluster` (test/suites.ts).
 */

const ROOT = path.resolve(__dirname, '..');
const LAYERS = ['test/unit', 'test/integration', 'test/e2e'] as const;
/** Makes a test/unit file fail as soon as it starts a child process. */
const NO_PROCESS = path.join(ROOT, 'test', 'helpers', 'no-process.ts');
/** A file hung past this is killed and counted failed: no single file here needs half of it. */
const FILE_LIMIT_MS = 40 * 60_000;

interface FileResult {
  file: string;
  lane: string;
  seconds: number;
  exitCode: number | null;
  pass: number;
  fail: number;
}

interface Lane {
  name: string;
  labDir: string;
  /** Files only this lane runs (they need its lab); afterwards it takes from the shared queue. */
  own: string[];
}

function listFiles(dir: string): string[] {
  return readdirSync(path.join(ROOT, dir))
    .filter((f) => f.endsWith('.test.ts'))
    .sort()
    .map((f) => `${dir}/${f}`);
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, limitMs: number): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const chunks: Buffer[] = [];
    child.stdout.on('data', (c: Buffer) => chunks.push(c));
    child.stderr.on('data', (c: Buffer) => chunks.push(c));
    const timer = setTimeout(() => {
      chunks.push(Buffer.from(`\n# killed after ${limitMs / 60_000} minutes\n`));
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }, limitMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output: Buffer.concat(chunks).toString('utf8') });
    });
  });
}

function count(output: string, key: 'pass' | 'fail'): number {
  const m = new RegExp(`^# ${key} (\\d+)$`, 'm').exec(output);
  return m ? Number(m[1]) : 0;
}

async function runFile(file: string, lane: Lane, results: FileResult[]): Promise<void> {
  const env = { ...process.env, VMRESTORE_LAB_DIR: lane.labDir };
  const started = Date.now();
  const guard = file.startsWith('test/unit/') ? ['--import', NO_PROCESS] : [];
  const args = ['--import', 'tsx', ...guard, '--test', '--test-reporter=tap', file];
  const { code, output } = await run(process.execPath, args, env, FILE_LIMIT_MS);
  const r: FileResult = {
    file,
    lane: lane.name,
    seconds: (Date.now() - started) / 1000,
    exitCode: code,
    pass: count(output, 'pass'),
    fail: count(output, 'fail'),
  };
  results.push(r);
  const verdict = code === 0 ? 'ok' : 'FAILED';
  process.stdout.write(`\n# ===== ${file} (lane ${lane.name}, ${r.seconds.toFixed(0)} s, ${verdict}) =====\n${output}`);
}

async function labUp(lane: Lane): Promise<void> {
  const env = { ...process.env, VMRESTORE_LAB_DIR: lane.labDir };
  const { code, output } = await run(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), 'lab', 'up', '--quiet'], env, 20 * 60_000);
  if (code !== 0) throw new Error(`lab for lane ${lane.name} (${lane.labDir}) did not start:\n${output}`);
}

async function labDown(lane: Lane): Promise<void> {
  const env = { ...process.env, VMRESTORE_LAB_DIR: lane.labDir };
  await run(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), 'lab', 'down'], env, 120_000);
}

function summary(results: FileResult[], wallSeconds: number): string {
  const rows = [...results].sort((a, b) => a.lane.localeCompare(b.lane) || b.seconds - a.seconds);
  const lines = rows.map(
    (r) =>
      `#   ${r.lane.padEnd(6)} ${r.seconds.toFixed(0).padStart(5)} s  ${r.exitCode === 0 ? 'ok    ' : 'FAILED'} ${String(r.pass).padStart(3)} pass ${String(r.fail).padStart(2)} fail  ${r.file}`,
  );
  const byLane = new Map<string, number>();
  for (const r of results) byLane.set(r.lane, (byLane.get(r.lane) ?? 0) + r.seconds);
  const layers = LAYERS.map((layer) => {
    const files = results.filter((r) => r.file.startsWith(`${layer}/`));
    return `${layer.slice('test/'.length)} ${files.reduce((s, r) => s + r.seconds, 0).toFixed(0)} s (${files.length} files)`;
  });
  const pass = results.reduce((s, r) => s + r.pass, 0);
  const fail = results.reduce((s, r) => s + r.fail, 0);
  const failed = results.filter((r) => r.exitCode !== 0);
  return [
    '',
    '# ===== summary =====',
    ...lines,
    `# layers: ${layers.join(', ')}`,
    `# lanes: ${[...byLane].map(([l, s]) => `${l} ${(s / 60).toFixed(1)} min`).join(', ')}; wall clock ${(wallSeconds / 60).toFixed(1)} min`,
    `# files ${results.length}, tests passed ${pass}, failed ${fail}`,
    ...(failed.length ? [`# failed files: ${failed.map((r) => r.file).join(', ')}`] : []),
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  const started = Date.now();
  const requested = process.argv.slice(2).map((f) => path.relative(ROOT, path.resolve(f)));
  // The cluster's own test runs in `npm run test:cluster`, on the cluster it builds and starts.
  const all = requested.length ? requested : LAYERS.flatMap(listFiles).filter((f) => f !== CLUSTER_TEST);
  for (const f of all) if (!existsSync(path.join(ROOT, f))) throw new Error(`no test file ${f}`);
  const laneCount = Number(process.env.VMRESTORE_TEST_LANES ?? 2);
  const defaultLab = process.env.VMRESTORE_LAB_DIR ?? path.join(ROOT, '.lab');

  const lanes: Lane[] = [{ name: 'boot', labDir: defaultLab, own: all.filter((f) => BOOT_FILES.includes(f)) }];
  const shared = all.filter((f) => !BOOT_FILES.includes(f));
  // Whole restores first, then the single-peer files, then the lab-free unit files, which fill the gaps.
  const rank = (f: string): number => -LAYERS.findIndex((l) => f.startsWith(`${l}/`));
  shared.sort((a, b) => rank(a) - rank(b));
  if (laneCount >= 2) {
    for (let i = 2; i <= laneCount; i++) lanes.push({ name: i === 2 ? 'main' : `main${i - 1}`, labDir: `${defaultLab}-lane${i}`, own: [] });
  } else {
    lanes[0].own.push(...shared.splice(0));
  }
  lanes[0].own.sort((a, b) => BOOT_FILES.indexOf(a) - BOOT_FILES.indexOf(b));

  // The qemu guests every boot test uses, built once before the lanes start (minutes cold, cached after).
  if (all.some((f) => BOOT_FILES.includes(f) || /uefi-bios|verify/.test(f))) {
    process.stdout.write('# building or finding the lab guest images\n');
    await Promise.all([ensureGuestImage('debian12-bios'), ensureGuestImage('debian12-uefi')]);
  }
  // One after the other: each lab picks free ports, and two picking at once would pick the same.
  for (const lane of lanes) await labUp(lane);
  process.stdout.write(`# ${all.length} files in ${lanes.length} lane(s): ${lanes.map((l) => `${l.name} on ${l.labDir}`).join(', ')}\n`);

  const results: FileResult[] = [];
  try {
    await Promise.all(
      lanes.map(async (lane) => {
        for (const f of lane.own) await runFile(f, lane, results);
        for (let f = shared.shift(); f !== undefined; f = shared.shift()) await runFile(f, lane, results);
      }),
    );
  } finally {
    for (const lane of lanes.slice(1)) await labDown(lane);
  }
  const text = summary(results, (Date.now() - started) / 1000);
  process.stdout.write(text);
  const logDir = path.join(defaultLab, 'logs');
  mkdirSync(logDir, { recursive: true });
  writeFileSync(path.join(logDir, 'test-summary.txt'), text);
  process.exitCode = results.length === all.length && results.every((r) => r.exitCode === 0) ? 0 : 1;
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
