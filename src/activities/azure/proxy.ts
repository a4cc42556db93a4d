/**
 * The Azure proxy as a data mover: its worker (`vmrestore worker --azure-proxy NAME`, inside the proxy VM)
 * serves the proxy's own task queue and carries the VHD uploads of the restores that name it.
 */
import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { azureProxyTaskQueue, type AppConfig } from '../../config';
import { FailureType, RestoreError } from '../../domain/errors';
import { defaultWorkerIdentity, type AzureContext } from './context';

/** The Azure proxy queues a worker serves: one proxy's (`--azure-proxy NAME`), or every embedded one. */
export function azureProxyQueues(config: AppConfig, only?: string): { name: string; taskQueue: string; identity: string }[] {
  const proxies = config.azure?.proxies ?? [];
  if (only !== undefined && !proxies.some((p) => p.name === only)) {
    throw new Error(`no Azure proxy named '${only}' is configured (known: ${proxies.map((p) => p.name).join(', ') || 'none'})`);
  }
  return proxies
    .filter((p) => (only === undefined ? p.embeddedWorker : p.name === only))
    .map((p) => ({
      name: p.name,
      taskQueue: azureProxyTaskQueue(config, p),
      identity: `${defaultWorkerIdentity()}/vmrestore-azure-proxy-${p.name}`,
    }));
}

/** Identities of the workers that polled the queue for activity tasks recently, as the server lists them. */
export async function activityPollers(client: Client, namespace: string, taskQueue: string): Promise<string[]> {
  const res = await client.workflowService.describeTaskQueue({
    namespace,
    taskQueue: { name: taskQueue, kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
    taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
  });
  return (res.pollers ?? []).map((p) => p.identity ?? '').filter((id) => id !== '');
}

export function proxyActivities(c: AzureContext) {
  const { config, client } = c;
  return {
    /**
     * Returns once a worker polls the Azure proxy's task queue (it starts when the proxy VM boots), so the
     * uploads are scheduled on a queue someone serves; fails naming the queue after `timeoutSeconds`.
     */
    async waitForAzureProxyWorker(args: { proxy: string; vmName: string; taskQueue: string; timeoutSeconds: number }): Promise<string[]> {
      const ctx = Context.current();
      const deadline = Date.now() + args.timeoutSeconds * 1000;
      for (;;) {
        const pollers = await activityPollers(client, config.temporal.namespace, args.taskQueue);
        if (pollers.length > 0) return pollers;
        if (Date.now() >= deadline) {
          throw new RestoreError(
            FailureType.Configuration,
            `no worker polled task queue '${args.taskQueue}' of Azure proxy '${args.proxy}' within ${args.timeoutSeconds} s ` +
              `of VM '${args.vmName}' running; start 'vmrestore worker --azure-proxy ${args.proxy}' inside it`,
          );
        }
        await ctx.sleep(1000);
      }
    },
  };
}
