import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { stringify } from 'yaml';

/** The loopback ports of the one-process cluster: every service's gRPC and membership port. */
export interface ClusterPorts {
  frontend: number;
  frontendHttp: number;
  frontendMembership: number;
  history: number;
  historyMembership: number;
  matching: number;
  matchingMembership: number;
  worker: number;
  workerMembership: number;
  ui: number;
}

export interface SqlStore {
  host: string;
  port: number;
  user: string;
  password: string;
}

export const DATABASES = { default: 'temporal', visibility: 'temporal_visibility' } as const;
/** Fixed when the database is created: changing it later would need a new database. */
export const HISTORY_SHARDS = 4;
/** The file name (without .yaml) the server and UI server load from their config folders: their `--env`. */
export const CONFIG_ENV = 'vmrestore';

function sqlDatastore(db: SqlStore, databaseName: string, maxConns: number): Record<string, unknown> {
  return {
    sql: {
      pluginName: 'postgres12',
      databaseName,
      connectAddr: `${db.host}:${db.port}`,
      connectProtocol: 'tcp',
      user: db.user,
      password: db.password,
      maxConns,
      maxIdleConns: maxConns,
      maxConnLifetime: '1h',
    },
  };
}

function service(grpcPort: number, membershipPort: number, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { rpc: { grpcPort, membershipPort, bindOnLocalHost: true, ...extra } };
}

/**
 * The server's configuration: PostgreSQL persistence and SQL visibility, every service in one process on
 * loopback, the one frontend the clients use. The same shape as the server's config/development-postgres12.yaml.
 */
export function serverConfig(db: SqlStore, ports: ClusterPorts, dynamicConfigFile: string): Record<string, unknown> {
  return {
    log: { stdout: true, level: 'warn' },
    persistence: {
      defaultStore: 'postgres-default',
      visibilityStore: 'postgres-visibility',
      numHistoryShards: HISTORY_SHARDS,
      datastores: {
        'postgres-default': sqlDatastore(db, DATABASES.default, 20),
        'postgres-visibility': sqlDatastore(db, DATABASES.visibility, 10),
      },
    },
    global: { membership: { maxJoinDuration: '30s', broadcastAddress: '127.0.0.1' } },
    services: {
      frontend: service(ports.frontend, ports.frontendMembership, { httpPort: ports.frontendHttp }),
      history: service(ports.history, ports.historyMembership),
      matching: service(ports.matching, ports.matchingMembership),
      worker: service(ports.worker, ports.workerMembership),
    },
    clusterMetadata: {
      enableGlobalNamespace: false,
      failoverVersionIncrement: 10,
      masterClusterName: 'active',
      currentClusterName: 'active',
      clusterInformation: {
        active: { enabled: true, initialFailoverVersion: 1, rpcName: 'frontend', rpcAddress: `127.0.0.1:${ports.frontend}` },
      },
    },
    dcRedirectionPolicy: { policy: 'noop' },
    dynamicConfigClient: { filepath: dynamicConfigFile, pollInterval: '10s' },
  };
}

/** The Web UI server's configuration: the cluster's frontend, on loopback. */
export function uiConfig(ports: ClusterPorts): Record<string, unknown> {
  return {
    temporalGrpcAddress: `127.0.0.1:${ports.frontend}`,
    host: '127.0.0.1',
    port: ports.ui,
    enableUi: true,
    defaultNamespace: 'default',
    cors: { cookieInsecure: true },
    hideLogs: true,
  };
}

/** Writes `<dir>/server/vmrestore.yaml`, its dynamic config and `<dir>/ui/vmrestore.yaml`; returns the folders. */
export function writeClusterConfig(dir: string, db: SqlStore, ports: ClusterPorts): { serverConfigDir: string; uiConfigDir: string } {
  const serverConfigDir = path.join(dir, 'server');
  const uiConfigDir = path.join(dir, 'ui');
  mkdirSync(serverConfigDir, { recursive: true, mode: 0o700 });
  mkdirSync(uiConfigDir, { recursive: true, mode: 0o700 });
  const dynamicConfigFile = path.join(serverConfigDir, 'dynamicconfig.yaml');
  // The server's defaults, as a deployment starts with; the file is there to be edited while it runs.
  writeFileSync(dynamicConfigFile, '# Temporal dynamic config of the vmrestore lab cluster (polled every 10 s).\n{}\n');
  // It holds the database password.
  writeFileSync(path.join(serverConfigDir, `${CONFIG_ENV}.yaml`), stringify(serverConfig(db, ports, dynamicConfigFile)), { mode: 0o600 });
  writeFileSync(path.join(uiConfigDir, `${CONFIG_ENV}.yaml`), stringify(uiConfig(ports)));
  return { serverConfigDir, uiConfigDir };
}
