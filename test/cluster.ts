import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { BOOT_FILES, CLUSTER_TEST } from './suites';

/**
 * `npm run test:cluster`: the end-to-end files again, on the Temporal server built from source with
 * PostgreSQL persistence and SQL visibility (src/lab/cluster) instead of the CLI's dev server, plus the
 * cluster's own integration test. Through test/run.ts, in labs of their own (`.lab-cluster` and its
 * lanes), so the dev-server lab of `npm start` and `npm test` is left as it is; those labs, PostgreSQL
 * included, are stopped afterwards.
 *
 * The qemu boot files are left out: they boot guests for minutes and exercise qemu, not Temporal, and
 * `npm test` runs them on the dev server. `npm run test:cluster -- <files>` runs only those files.
 */
const ROOT = path.resolve(__dirname, '..');

function node(args: string[], env: NodeJS.ProcessEnv): Promise<number | null> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: 'inherit' });
    child.on('close', resolve);
  });
}

async function main(): Promise<void> {
  const started = Date.now();
  const requested = process.argv.slice(2);
  const e2e = readdirSync(path.join(ROOT, 'test', 'e2e'))
    .filter((f) => f.endsWith('.test.ts'))
    .sort()
    .map((f) => `test/e2e/${f}`)
    .filter((f) => !BOOT_FILES.includes(f));
  const files = requested.length ? requested : [CLUSTER_TEST, ...e2e];
  const labDir = process.env.VMRESTORE_LAB_DIR ?? path.join(ROOT, '.lab-cluster');
  const env = { ...process.env, VMRESTORE_LAB_TEMPORAL: 'cluster', VMRESTORE_LAB_DIR: labDir };
  process.stdout.write(`# test:cluster: ${files.length} files on the Temporal cluster (labs ${labDir}*)\n`);
  let code: number | null = 1;
  try {
    code = await node(['--import', 'tsx', path.join(ROOT, 'test', 'run.ts'), ...files], env);
  } finally {
    // test/run.ts stops the labs of its other lanes itself.
    await node([path.join(ROOT, 'bin', 'vmrestore.cjs'), 'lab', 'down'], env);
    process.stdout.write(`# test:cluster: ${((Date.now() - started) / 60_000).toFixed(1)} min in all\n`);
  }
  process.exitCode = code ?? 1;
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
});
