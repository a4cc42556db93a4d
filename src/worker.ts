import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createMappedAzureActivities } from './activities/azure';
import type { AppConfig } from './config';
import { createMappedVSphereActivities } from './activities/vsphere';
import { VSphereSessions } from './activities/vsphere-sessions';

export interface RunWorkerOptions {
  config: AppConfig;
  taskQueue?: string;
  log?: (line: string) => void;
  /** Resolves when the worker should stop. */
  until?: Promise<unknown>;
}

/** Builds the activity dependencies from config and runs a worker until told to stop. */
export async function runWorker(opts: RunWorkerOptions): Promise<void> {
  const { config } = opts;
  const log = opts.log ?? (() => {});
  const connection = await NativeConnection.connect({ address: config.temporal.address });
  const sessions = new VSphereSessions(config);
  // Lease activities talk to lease workflows through a regular client.
  const clientConnection = await Connection.connect({ address: config.temporal.address });
  const client = new Client({ connection: clientConnection, namespace: config.temporal.namespace });
  const taskQueue = opts.taskQueue ?? config.temporal.taskQueue;
  try {
    const worker = await Worker.create({
      connection,
      namespace: config.temporal.namespace,
      taskQueue,
      workflowsPath: require.resolve('./workflows'),
      activities: {
        ...createMappedVSphereActivities({ config, sessions }),
        ...createMappedAzureActivities({ config: { ...config, temporal: { ...config.temporal, taskQueue } }, client }),
      },
      // Checkpoints reach the server within a second, which bounds re-written bytes after a crash.
      maxHeartbeatThrottleInterval: '1 second',
      defaultHeartbeatThrottleInterval: '1 second',
      // Lets a disk writer record its last checkpoint before the process exits.
      shutdownGraceTime: '5 seconds',
    });
    log(`worker polling task queue '${taskQueue}' on ${config.temporal.address} (namespace ${config.temporal.namespace})`);
    if (opts.until) await worker.runUntil(opts.until);
    else await worker.run();
  } finally {
    await sessions.closeAll();
    await clientConnection.close();
    await connection.close();
  }
}
