import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { labTemporalKind } from '../../src/lab/cluster';
import { serverConfig, uiConfig, type ClusterPorts } from '../../src/lab/cluster/server-config';

const ports: ClusterPorts = {
  frontend: 7300,
  frontendHttp: 7301,
  frontendMembership: 7302,
  history: 7303,
  historyMembership: 7304,
  matching: 7305,
  matchingMembership: 7306,
  worker: 7307,
  workerMembership: 7308,
  ui: 45000,
};

describe('lab Temporal kind', () => {
  it('follows VMRESTORE_LAB_TEMPORAL, else keeps the running kind, else the dev server', () => {
    assert.equal(labTemporalKind(undefined, {}), 'dev');
    assert.equal(labTemporalKind('cluster', {}), 'cluster');
    assert.equal(labTemporalKind('dev', { VMRESTORE_LAB_TEMPORAL: 'cluster' }), 'cluster');
    assert.equal(labTemporalKind('cluster', { VMRESTORE_LAB_TEMPORAL: 'dev' }), 'dev');
  });

  it('names a bad value', () => {
    assert.throws(
      () => labTemporalKind(undefined, { VMRESTORE_LAB_TEMPORAL: 'sqlite' }),
      /VMRESTORE_LAB_TEMPORAL: expected 'dev' or 'cluster', got 'sqlite'/,
    );
  });
});

describe('cluster server config', () => {
  const db = { host: '127.0.0.1', port: 5433, user: 'temporal', password: 'pw' };
  const cfg = serverConfig(db, ports, '/x/dynamicconfig.yaml') as {
    persistence: { defaultStore: string; visibilityStore: string; datastores: Record<string, { sql: Record<string, unknown> }> };
    services: Record<string, { rpc: { grpcPort: number; membershipPort: number; bindOnLocalHost: boolean } }>;
    clusterMetadata: { clusterInformation: { active: { rpcAddress: string } } };
  };

  it('keeps executions and visibility in the two PostgreSQL databases', () => {
    const stores = cfg.persistence.datastores;
    const def = stores[cfg.persistence.defaultStore].sql;
    const vis = stores[cfg.persistence.visibilityStore].sql;
    assert.deepEqual([def.pluginName, def.databaseName, def.connectAddr], ['postgres12', 'temporal', '127.0.0.1:5433']);
    assert.deepEqual([vis.pluginName, vis.databaseName, vis.connectAddr], ['postgres12', 'temporal_visibility', '127.0.0.1:5433']);
  });

  it('binds every service to loopback on its ports and advertises the frontend to clients and the UI', () => {
    assert.deepEqual(
      Object.entries(cfg.services).map(([name, s]) => [name, s.rpc.grpcPort, s.rpc.membershipPort, s.rpc.bindOnLocalHost]),
      [
        ['frontend', 7300, 7302, true],
        ['history', 7303, 7304, true],
        ['matching', 7305, 7306, true],
        ['worker', 7307, 7308, true],
      ],
    );
    assert.equal(cfg.clusterMetadata.clusterInformation.active.rpcAddress, '127.0.0.1:7300');
    assert.equal(uiConfig(ports).temporalGrpcAddress, '127.0.0.1:7300');
    assert.equal(uiConfig(ports).port, 45000);
  });
});
