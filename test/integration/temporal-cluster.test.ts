import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client, Connection } from '@temporalio/client';
import { temporal as proto } from '@temporalio/proto';
import { bundleWorkflowCode, DefaultLogger, NativeConnection, Runtime, Worker } from '@temporalio/worker';
import { SEARCH_ATTRIBUTES } from '../../src/domain/search-attributes';
import { psql, startClusterTemporal, stopCluster, TEMPORAL_SERVER_VERSION, type LabCluster } from '../../src/lab/cluster';
import { pidAlive } from '../../src/lab/net';
import { readLabState } from '../../src/lab';

/**
 * The Temporal server on PostgreSQL: the one `npm run test:cluster` runs the end-to-end files on (its lab's,
 * when the lab runs one), else a cluster of this test's own in a temporary lab folder, stopped after.
 */
let cluster: LabCluster;
let address: string;
let own: { dir: string; labDir: string | undefined } | undefined;

describe(`Temporal server ${TEMPORAL_SERVER_VERSION} on PostgreSQL`, () => {
  before(async () => {
    Runtime.install({ logger: new DefaultLogger('WARN') });
    const lab = readLabState();
    if (lab.temporal?.kind === 'cluster' && lab.cluster && pidAlive(lab.cluster.serverPid)) {
      cluster = lab.cluster;
      address = lab.temporal.address;
      return;
    }
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-cluster-'));
    // As root, PostgreSQL runs as the postgres account, which must be able to enter the folder.
    chmodSync(dir, 0o755);
    // The cluster's processes log into the lab folder: this test's own.
    own = { dir, labDir: process.env.VMRESTORE_LAB_DIR };
    process.env.VMRESTORE_LAB_DIR = dir;
    const started = await startClusterTemporal(undefined, dir, { frontend: 0, ui: 0, postgres: 0 }, new Set(), (l) =>
      process.stderr.write(`# ${l}\n`),
    );
    cluster = started.cluster;
    address = started.temporal.address;
  });
  after(async () => {
    if (!own) return;
    if (cluster) await stopCluster(cluster);
    if (own.labDir === undefined) delete process.env.VMRESTORE_LAB_DIR;
    else process.env.VMRESTORE_LAB_DIR = own.labDir;
    rmSync(own.dir, { recursive: true, force: true });
  });

  it("has the project's search attributes registered as keywords in the default namespace", async () => {
    const conn = await Connection.connect({ address });
    try {
      const custom = (await conn.operatorService.listSearchAttributes({ namespace: 'default' })).customAttributes ?? {};
      const KEYWORD = proto.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
      for (const name of Object.keys(SEARCH_ATTRIBUTES)) assert.equal(custom[name], KEYWORD, `${name} in ${JSON.stringify(custom)}`);
    } finally {
      await conn.close();
    }
    // SQL visibility maps each alias to a keyword column of the namespace, kept in PostgreSQL.
    const namespaceRow = await psql(cluster.postgres, 'temporal', "SELECT encode(data, 'escape') FROM namespaces WHERE name = 'default'");
    for (const name of Object.keys(SEARCH_ATTRIBUTES))
      assert.ok(namespaceRow.includes(name), `namespace record in PostgreSQL names ${name}`);
  });

  it('keeps a finished workflow in PostgreSQL: its execution, its history and its visibility row with the search attributes', async () => {
    const workflowBundle = await bundleWorkflowCode({ workflowsPath: require.resolve('../helpers/cluster-workflow'), logger: quiet });
    const nativeConnection = await NativeConnection.connect({ address });
    const connection = await Connection.connect({ address });
    const taskQueue = `cluster-test-${randomBytes(3).toString('hex')}`;
    const vmName = `vm-${randomBytes(3).toString('hex')}`;
    const workflowId = `cluster-probe-${vmName}`;
    try {
      const client = new Client({ connection, namespace: 'default' });
      const worker = await Worker.create({ connection: nativeConnection, namespace: 'default', taskQueue, workflowBundle });
      const result = await worker.runUntil(client.workflow.execute('clusterProbe', { taskQueue, workflowId, args: [vmName] }));
      assert.equal(result, `${workflowId} ran for ${vmName}`);

      const id = workflowId.replace(/'/g, "''");
      const execution = await psql(
        cluster.postgres,
        'temporal',
        `SELECT encode(run_id, 'hex') FROM executions WHERE workflow_id = '${id}'`,
      );
      assert.match(execution, /^[0-9a-f]{32}$/, `one row in executions for ${workflowId}, got '${execution}'`);
      const historyNodes = Number(
        await psql(cluster.postgres, 'temporal', `SELECT count(*) FROM history_node WHERE tree_id = decode('${execution}', 'hex')`),
      );
      assert.ok(historyNodes >= 2, `history_node rows of run ${execution}: ${historyNodes}`);

      // Visibility is written asynchronously, by the history service's visibility queue.
      let row = '';
      for (let i = 0; i < 100 && !row.includes('done'); i++) {
        row = await psql(
          cluster.postgres,
          'temporal_visibility',
          `SELECT status || ' ' || search_attributes::text FROM executions_visibility WHERE workflow_id = '${id}'`,
        );
        if (!row.includes('done')) await new Promise((r) => setTimeout(r, 200));
      }
      const COMPLETED = String(proto.api.enums.v1.WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_COMPLETED);
      assert.ok(row.startsWith(`${COMPLETED} `) && row.includes(vmName) && row.includes('done'), `visibility row: '${row}'`);

      // And the server answers a query on the custom attribute from that table.
      const listed: string[] = [];
      for await (const w of client.workflow.list({ query: `RestoreVm = '${vmName}' AND RestorePhase = 'done'` })) listed.push(w.workflowId);
      assert.deepEqual(listed, [workflowId]);
    } finally {
      await connection.close();
      await nativeConnection.close();
    }
  });
});

const quiet = {
  log: () => {},
  trace: () => {},
  debug: () => {},
  info: () => {},
  warn: () => {},
  error: (m: string) => process.stderr.write(`${m}\n`),
};
