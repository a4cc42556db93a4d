import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { bundleWorkflowCode, type WorkerOptions } from '@temporalio/worker';
import { cacheDir } from './cache-dir';

/**
 * The workflow code a worker runs, bundled once per version of the code and kept on disk.
 *
 * Worker.create bundles the workflows with webpack on every start: seconds of CPU on an idle machine,
 * far more on a loaded one, and all of it on the path of a worker coming back after a crash. The bundle
 * depends only on the source files and the SDK, so it is cached under a digest of both: a changed file
 * gives a new digest and a new bundle, never a stale one. The data converter's payload and failure
 * converter modules are bundled in and part of the key. A worker that adds workflow interceptors or
 * plugins (metrics, tracing) bundles as before, since those change the bundle.
 */

/** Bundles no worker started from for this long are removed when a new one is written. */
const UNUSED_FOR_MS = 24 * 3600_000;
const EXTENSIONS = new Set(['.ts', '.js', '.cjs', '.mjs', '.json']);

/**
 * Digest of every source file under the code root (what the workflows can import), the SDK versions and
 * `extra` (what else goes into the bundle).
 */
export async function workflowCodeDigest(workflowsPath: string, extra: string[] = []): Promise<string> {
  const root = path.dirname(path.dirname(workflowsPath));
  const files = (await fsp.readdir(root, { recursive: true }))
    .filter((f) => EXTENSIONS.has(path.extname(f)) && !f.split(path.sep).includes('node_modules'))
    .sort();
  const h = createHash('sha256');
  for (const pkg of ['@temporalio/worker', '@temporalio/workflow', '@temporalio/common']) {
    const manifest = JSON.parse(await fsp.readFile(require.resolve(`${pkg}/package.json`), 'utf8')) as { version: string };
    h.update(`${pkg}@${manifest.version}\n`);
  }
  for (const e of extra) h.update(`${e}\n`);
  for (const f of files) {
    h.update(`${f}\n`);
    h.update(await fsp.readFile(path.join(root, f)));
  }
  return h.digest('hex').slice(0, 24);
}

/**
 * What to spread into Worker.create for the workflows at `workflowsPath`: a cached bundle, built on the
 * first start of this version of the code, or `workflowsPath` itself where the options change the bundle.
 */
export async function workflowCode(
  workflowsPath: string,
  options: Pick<WorkerOptions, 'interceptors' | 'plugins' | 'dataConverter'>,
): Promise<Pick<WorkerOptions, 'workflowsPath' | 'workflowBundle'>> {
  const changesBundle = (options.interceptors?.workflowModules?.length ?? 0) > 0 || (options.plugins?.length ?? 0) > 0;
  if (changesBundle || process.env.VMRESTORE_WORKFLOW_BUNDLE_CACHE === '0') return { workflowsPath };
  // The payload and failure converters run inside the workflow sandbox too, so they are part of the bundle
  // (payload encryption's failure converter seals failure messages raised by workflow code).
  const { payloadConverterPath, failureConverterPath } = options.dataConverter ?? {};
  const key = await workflowCodeDigest(workflowsPath, [payloadConverterPath ?? '-', failureConverterPath ?? '-']);
  const dir = cacheDir('workflow-bundles');
  const codePath = path.join(dir, `workflows-${key}.js`);
  try {
    // Touched on use, so pruning (below) keeps what any worker still starts from.
    const now = new Date();
    await fsp.utimes(codePath, now, now);
    return { workflowBundle: { codePath } };
  } catch {
    // not built yet for this version of the code
  }
  const { code } = await bundleWorkflowCode({ workflowsPath, payloadConverterPath, failureConverterPath });
  await fsp.mkdir(dir, { recursive: true });
  // Written aside and renamed, so a worker starting beside this one never reads half a bundle.
  const tmp = `${codePath}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, code);
  await fsp.rename(tmp, codePath);
  await pruneUnused(dir, codePath);
  return { workflowBundle: { codePath } };
}

async function pruneUnused(dir: string, keep: string): Promise<void> {
  for (const name of await fsp.readdir(dir)) {
    const p = path.join(dir, name);
    if (p === keep || !/^workflows-[0-9a-f]+\.js$/.test(name)) continue;
    try {
      if (Date.now() - (await fsp.stat(p)).mtimeMs > UNUSED_FOR_MS) await fsp.rm(p, { force: true });
    } catch {
      // gone already, or another worker's: never a reason to fail a start
    }
  }
}
