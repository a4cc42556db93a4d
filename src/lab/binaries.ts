import { existsSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { FailureType, RestoreError } from '../domain/errors';

/** A Go-built tool the lab needs, pinned to a version that `go install` accepts. */
export interface GoTool {
  name: string;
  envVar: string;
  module: string;
  version: string;
}

export const TEMPORAL_CLI: GoTool = {
  name: 'temporal',
  envVar: 'TEMPORAL_CLI_PATH',
  module: 'github.com/temporalio/cli/cmd/temporal',
  // Later tags carry replace directives and are refused by `go install pkg@version`.
  version: 'v1.5.1',
};

export const VCSIM: GoTool = {
  name: 'vcsim',
  envVar: 'VCSIM_PATH',
  module: 'github.com/vmware/govmomi/vcsim',
  // From v0.47.0 vcsim is a nested module with a replace directive.
  version: 'v0.46.3',
};

/** govmomi's own CLI: the independent client tests compare our vSphere view with. */
export const GOVC: GoTool = {
  name: 'govc',
  envVar: 'GOVC_PATH',
  module: 'github.com/vmware/govmomi/govc',
  version: 'v0.46.3',
};

export function toolCacheDir(): string {
  const base = process.env.VMRESTORE_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'vmrestore');
  return path.join(base, 'bin');
}

export function cachedToolPath(tool: GoTool): string {
  return path.join(toolCacheDir(), `${tool.name}-${tool.version}`, tool.name);
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
  log(`building ${tool.name} ${tool.version} with go install (once; cached in ${gobin})`);
  const r = spawnSync(go, ['install', `${tool.module}@${tool.version}`], {
    env: { ...process.env, GOBIN: gobin, CGO_ENABLED: process.env.CGO_ENABLED ?? '0' },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (r.status !== 0 || !existsSync(cached)) {
    throw new RestoreError(
      FailureType.Configuration,
      `go install ${tool.module}@${tool.version} failed (exit ${r.status}): ${(r.stderr ?? '').trim().slice(-2000)}; ` +
        `set ${tool.envVar} to an existing ${tool.name} binary instead`,
    );
  }
  return cached;
}
