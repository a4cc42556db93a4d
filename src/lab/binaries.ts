import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { FailureType, RestoreError } from '../domain/errors';
import { cacheDir } from '../cache-dir';

/** A Go-built tool the lab needs, pinned to a version that `go install` accepts. */
export interface GoTool {
  name: string;
  envVar: string;
  module: string;
  version: string;
  /** A Go program kept in this repository, built with `go build` there instead of `go install module@version`. */
  source?: string;
  /** The file `go install` writes when it is not `name` (a package named `cmd/server` installs `server`). */
  installs?: string;
}

export const TEMPORAL_CLI: GoTool = {
  name: 'temporal',
  envVar: 'TEMPORAL_CLI_PATH',
  module: 'github.com/temporalio/cli/cmd/temporal',
  // Later tags carry replace directives and are refused by `go install pkg@version`.
  version: 'v1.5.1',
};

/** govmomi's simulator started as its vcsim command does, plus ExportVm (src/lab/vcsim/main.go says why). */
export const VCSIM: GoTool = {
  name: 'vcsim',
  envVar: 'VCSIM_PATH',
  module: 'github.com/vmware/govmomi/simulator',
  // The govmomi version src/lab/vcsim/go.mod pins; the cache key adds a hash of the sources.
  version: 'v0.46.3',
  source: path.join(__dirname, 'vcsim'),
};

/** govmomi's own CLI: the independent client tests compare our vSphere view with. */
export const GOVC: GoTool = {
  name: 'govc',
  envVar: 'GOVC_PATH',
  module: 'github.com/vmware/govmomi/govc',
  version: 'v0.46.3',
};

export function toolCacheDir(): string {
  return cacheDir('bin');
}

/** sha256 of a source tool's go.mod, go.sum and .go files: a changed program builds into a new cache entry. */
function sourceHash(dir: string): string {
  const hash = createHash('sha256');
  for (const file of readdirSync(dir)
    .filter((f) => /^go\.(mod|sum)$|\.go$/.test(f))
    .sort()) {
    hash.update(`${file}\0`).update(readFileSync(path.join(dir, file)));
  }
  return hash.digest('hex').slice(0, 12);
}

export function cachedToolPath(tool: GoTool): string {
  const key = tool.source ? `${tool.version}-${sourceHash(tool.source)}` : tool.version;
  return path.join(toolCacheDir(), `${tool.name}-${key}`, tool.name);
}

function goBinary(): string | undefined {
  for (const candidate of ['go', '/usr/local/go/bin/go']) {
    const r = spawnSync(candidate, ['version'], { encoding: 'utf8' });
    if (r.status === 0) return candidate;
  }
  return undefined;
}

/** Finds the tool: explicit env path, then the version cache; builds it once with `go install` if needed. */
export function ensureTool(tool: GoTool, log: (line: string) => void = () => {}): string {
  const explicit = process.env[tool.envVar];
  if (explicit) {
    if (!existsSync(explicit)) {
      throw new RestoreError(FailureType.Configuration, `${tool.envVar}=${explicit} does not exist`);
    }
    return explicit;
  }
  const cached = cachedToolPath(tool);
  if (existsSync(cached)) return cached;
  const go = goBinary();
  if (!go) {
    throw new RestoreError(
      FailureType.Configuration,
      `${tool.name} ${tool.version} is not in ${cached} and Go is not installed to build it; ` +
        `install Go >= 1.22, or set ${tool.envVar} to an existing ${tool.name} binary`,
    );
  }
  const gobin = path.dirname(cached);
  mkdirSync(gobin, { recursive: true });
  const how = tool.source ? `go build in ${tool.source}` : `go install ${tool.module}@${tool.version}`;
  log(`building ${tool.name} ${tool.version} with ${how} (once; cached in ${gobin})`);
  // A source build writes beside the cache entry and renames, so a lab starting alongside never runs half a file.
  const partial = `${cached}.${process.pid}.partial`;
  const r = spawnSync(go, tool.source ? ['build', '-o', partial, '.'] : ['install', `${tool.module}@${tool.version}`], {
    cwd: tool.source,
    env: { ...process.env, GOBIN: gobin, CGO_ENABLED: process.env.CGO_ENABLED ?? '0' },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (r.status === 0 && tool.source) renameSync(partial, cached);
  if (r.status === 0 && tool.installs) renameSync(path.join(gobin, tool.installs), cached);
  if (r.status !== 0 || !existsSync(cached)) {
    throw new RestoreError(
      FailureType.Configuration,
      `${how} failed (exit ${r.status}): ${(r.stderr ?? '').trim().slice(-2000)}; ` +
        `set ${tool.envVar} to an existing ${tool.name} binary instead`,
    );
  }
  return cached;
}
