import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { AppConfig } from '../../config';
import { FailureType, RestoreError } from '../../domain/errors';
import { leaseStateQuery, leaseWorkflowId } from '../../domain/lease';
import { chooseProxy, PROXY_POLL_FRESH_MS, proxySlotTarget, whyNoProxy, type ProxyStatus } from '../../domain/proxy-slots';
import { proxyTaskQueue } from '../../domain/task-queues';
import type { ProxyCandidate } from '../../domain/vsphere';

export interface ProxyChoiceRequest {
  proxies: ProxyCandidate[];
  /** Proxy → when a disk lost it (ms): it counts as live again only once its worker polls after that. */
  lost?: Record<string, number>;
  /** Who asks (the disk's slot holder): breaks ties between equally loaded proxies, differently per disk. */
  holder?: string;
  /** Wait until a proxy is free (heartbeating), instead of answering at once. */
  wait?: boolean;
  /** With `wait`: when the disk began waiting (ms), and how long it may wait while no proxy is live. */
  since?: number;
  noLiveLimitSeconds?: number;
}

export interface ProxyChoice {
  proxy?: ProxyCandidate;
  /** Without a proxy: why (no live worker, or every live proxy busy). */
  waiting?: string;
  status: ProxyStatus[];
}

const ms = (t: { seconds?: { toNumber(): number } | number | null; nanos?: number | null } | null | undefined): number =>
  t ? Number(typeof t.seconds === 'number' ? t.seconds : (t.seconds?.toNumber() ?? 0)) * 1000 + Math.floor((t.nanos ?? 0) / 1e6) : 0;

/** The control side's view of the proxies: liveness from their task queues' pollers, load from their slot leases. */
export function createProxySlotActivities(deps: { config: AppConfig; client: Client }) {
  const { config, client } = deps;
  const namespace = config.temporal.namespace;

  async function statusOf(c: ProxyCandidate, lostAt: number | undefined): Promise<ProxyStatus> {
    const queue = proxyTaskQueue(config.temporal.taskQueue, c.name);
    const d = await client.workflowService.describeTaskQueue({
      namespace,
      taskQueue: { name: queue, kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
      taskQueueType: temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
    });
    const now = Date.now();
    const fresh = (d.pollers ?? []).filter((p) => {
      const at = ms(p.lastAccessTime);
      return now - at < PROXY_POLL_FRESH_MS && (lostAt === undefined || at > lostAt);
    });
    let inUse = 0;
    try {
      const state = await client.workflow
        .getHandle(leaseWorkflowId(proxySlotTarget(c.name), config.temporal.taskQueue))
        .query(leaseStateQuery);
      inUse = Object.values(state.reserved ?? {}).reduce((a, n) => a + n, 0);
    } catch (err) {
      // No lease workflow yet: nobody holds a slot.
      if ((err as { name?: string }).name !== 'WorkflowNotFoundError') throw err;
    }
    return { name: c.name, live: fresh.length > 0, pollers: [...new Set(fresh.map((p) => p.identity ?? '?'))], inUse };
  }

  async function look(req: ProxyChoiceRequest): Promise<ProxyChoice> {
    const list = await Promise.all(req.proxies.map((c) => statusOf(c, req.lost?.[c.name])));
    const status = Object.fromEntries(list.map((s) => [s.name, s]));
    const proxy = chooseProxy(req.proxies, status, req.holder);
    return proxy ? { proxy, status: list } : { waiting: whyNoProxy(req.proxies, status).text, status: list };
  }

  return {
    /**
     * The proxy a disk should go to now (live worker, free slot, best transport, least loaded), or why
     * none. With `wait`, polls until one is free; fails with NoProxyAvailable once no proxy has been live
     * for `noLiveLimitSeconds` on end. The slot itself is taken afterwards, through its lease.
     */
    async chooseProxy(req: ProxyChoiceRequest): Promise<ProxyChoice> {
      if (req.proxies.length === 0) throw new RestoreError(FailureType.InvalidRequest, 'no proxy candidates to choose from');
      let choice = await look(req);
      if (!req.wait) return choice;
      const ctx = Context.current();
      const limitMs = (req.noLiveLimitSeconds ?? config.restore.proxyWaitSeconds) * 1000;
      let noLiveSince = req.since ?? Date.now();
      while (!choice.proxy) {
        if (choice.status.some((s) => s.live)) noLiveSince = Date.now();
        else if (Date.now() - noLiveSince >= limitMs) {
          throw new RestoreError(
            FailureType.NoProxyAvailable,
            `${choice.waiting} for ${Math.round(limitMs / 1000)} s (task queues ${req.proxies
              .map((c) => `'${proxyTaskQueue(config.temporal.taskQueue, c.name)}'`)
              .join(', ')}); start \`vmrestore worker --proxy NAME\` on a proxy host`,
          );
        }
        await ctx.sleep(1000);
        choice = await look(req);
      }
      return choice;
    },
  };
}

export type ProxySlotActivities = ReturnType<typeof createProxySlotActivities>;
