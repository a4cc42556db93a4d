import { existsSync } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import type { GoTool } from '../binaries';
import { run } from './run';

/**
 * The Temporal server the pinned CLI (v1.5.1) embeds as its dev server: the cluster runs the same server
 * code on PostgreSQL instead of SQLite, so a difference between the two suites is the deployment's. Its
 * go.mod asks for Go 1.25, which the machine's Go builds; the 1.30+ servers ask for Go 1.26.10 and would
 * need GOTOOLCHAIN set to a newer toolchain.
 */
export const TEMPORAL_SERVER_VERSION = 'v1.29.1';

export const TEMPORAL_SERVER: GoTool = {
  name: 'temporal-server',
  envVar: 'TEMPORAL_SERVER_PATH',
  module: 'go.temporal.io/server/cmd/server',
  version: TEMPORAL_SERVER_VERSION,
  installs: 'server',
};

/** The server's own schema tool: creates the databases and applies the versioned schema. */
export const TEMPORAL_SQL_TOOL: GoTool = {
  name: 'temporal-sql-tool',
  envVar: 'TEMPORAL_SQL_TOOL_PATH',
  module: 'go.temporal.io/server/cmd/tools/sql',
  version: TEMPORAL_SERVER_VERSION,
  installs: 'sql',
};

/** The Web UI server the CLI embeds (and docker-compose.yml runs), standalone beside the cluster. */
export const TEMPORAL_UI_SERVER: GoTool = {
  name: 'temporal-ui-server',
  envVar: 'TEMPORAL_UI_SERVER_PATH',
  module: 'github.com/temporalio/ui-server/v2/cmd/server',
  version: 'v2.42.1',
  installs: 'server',
};

/** The server module's source in the Go module cache (downloaded through the module proxy if absent). */
export async function temporalServerSource(): Promise<string> {
  const r = await run('go', ['mod', 'download', '-json', `go.temporal.io/server@${TEMPORAL_SERVER_VERSION}`], {
    env: { PATH: `${process.env.PATH ?? ''}:/usr/local/go/bin` },
  });
  const dir = r.status === 0 ? (JSON.parse(r.stdout) as { Dir?: string }).Dir : undefined;
  if (!dir || !existsSync(dir)) {
    throw new RestoreError(
      FailureType.Configuration,
      `go mod download go.temporal.io/server@${TEMPORAL_SERVER_VERSION} failed (exit ${r.status}): ${(r.stderr || r.stdout).trim().slice(-500)}`,
    );
  }
  return dir;
}

/** The PostgreSQL schema folder (`temporal` or `visibility`) of the pinned server. */
export function postgresSchemaDir(source: string, schema: 'temporal' | 'visibility'): string {
  return path.join(source, 'schema', 'postgresql', 'v12', schema);
}
