/**
 * Fencing of a disk writer that lost the Temporal server. A proxy whose host is cut off keeps its NFS
 * mount or LUN, and its activity keeps running: the server gives the disk to another proxy after one
 * heartbeat timeout, and both would write it. So a writer on a proxy asks the server, every few seconds,
 * whether its attempt is still the one the workflow waits for; it stops issuing blocks once it has not
 * heard back for half a heartbeat timeout (before the server can hand the disk on), and for good once the
 * server says another attempt has it.
 */
import type { Client } from '@temporalio/client';
import type { Info } from '@temporalio/activity';
import { FailureType, RestoreError } from '../../domain/errors';
import type { DiskBlock, ReadDiskBlocksOptions, RepositorySource, RestorePoint } from '../../repository';

/** Whether the activity is still pending on its workflow with this attempt; rejects when the server does not answer. */
export type AttemptProbe = (timeoutMs: number) => Promise<{ current: boolean; why?: string }>;

/** The probe through the workflow service: the activity among the workflow's pending ones, same attempt. */
export function serverProbe(client: Client, info: Info & Required<Pick<Info, 'workflowExecution'>>): AttemptProbe {
  const { workflowId, runId } = info.workflowExecution;
  return async (timeoutMs) => {
    const desc = await client.connection.withDeadline(Date.now() + timeoutMs, () =>
      client.workflowService.describeWorkflowExecution({
        namespace: info.workflowNamespace ?? client.options.namespace,
        execution: { workflowId, runId },
      }),
    );
    const pending = desc.pendingActivities?.find((a) => a.activityId === info.activityId);
    if (!pending) return { current: false, why: `activity ${info.activityId} of ${workflowId} is no longer pending` };
    if ((pending.attempt ?? 1) !== info.attempt) {
      return { current: false, why: `activity ${info.activityId} is at attempt ${pending.attempt}, this is attempt ${info.attempt}` };
    }
    return { current: true };
  };
}

export class WriterFence {
  /** When the server last answered. */
  private lastContact = Date.now();
  /** Set once the server said this attempt is no longer the disk's writer. */
  private superseded: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private probing = false;

  /**
   * @param staleMs  no block is issued once the server has not answered for this long
   * @param everyMs  how often the server is asked (each ask times out after this too)
   */
  constructor(
    private readonly probe: AttemptProbe,
    private readonly staleMs: number,
    private readonly everyMs: number,
  ) {
    this.timer = setInterval(() => void this.ask(), everyMs);
    this.timer.unref();
  }

  private async ask(): Promise<void> {
    if (this.probing || this.superseded) return;
    this.probing = true;
    try {
      const r = await this.probe(this.everyMs);
      this.lastContact = Date.now();
      if (!r.current) this.superseded = r.why ?? 'another attempt writes the disk';
    } catch {
      // No answer: lastContact stays where it was.
    } finally {
      this.probing = false;
    }
  }

  /** Resolves while the writer may go on; waits while the server is silent; throws once superseded. */
  async ready(signal?: AbortSignal): Promise<void> {
    for (;;) {
      if (this.superseded) {
        throw new RestoreError(FailureType.Superseded, `the disk writer stopped: ${this.superseded}`);
      }
      if (Date.now() - this.lastContact < this.staleMs) return;
      signal?.throwIfAborted();
      await new Promise((r) => setTimeout(r, Math.min(250, this.everyMs)));
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** The repository with every block held back until the fence lets the writer go on. */
export function fencedRepository(repo: RepositorySource, fence: WriterFence): RepositorySource {
  return {
    location: repo.location,
    listRestorePoints: () => repo.listRestorePoints(),
    getRestorePoint: (id) => repo.getRestorePoint(id),
    readDiskBlocks: (rp: RestorePoint, diskIndex: number, opts?: ReadDiskBlocksOptions): AsyncIterable<DiskBlock> => ({
      async *[Symbol.asyncIterator]() {
        for await (const block of repo.readDiskBlocks(rp, diskIndex, opts)) {
          await fence.ready(opts?.signal);
          yield block;
        }
      },
    }),
  };
}
