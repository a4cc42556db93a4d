import { AsyncLocalStorage } from 'node:async_hooks';
import { VSphereFaultError, describeFault, obj, str, type MoRef, type VimValue } from './soap';
import { abortableSleep } from '../abort';

/** What a task reads its state through: the session (kept to this, so tasks sit below the session). */
export interface PropertyReader {
  getProperties(target: MoRef, paths: string[]): Promise<Record<string, VimValue>>;
}

export type TaskState = 'queued' | 'running' | 'success' | 'error';

export interface TaskInfo {
  state: TaskState;
  /** Percent done while running, when the server reports it. */
  progress?: number;
  result?: VimValue;
  /** Fault type and message when `state` is 'error'. */
  error?: { fault: string; message: string };
}

export interface TaskWaitOptions {
  /** Called with the percentage each time it changes. */
  onProgress?: (percent: number) => void;
  /** Stops waiting (the task itself keeps running on the server). */
  signal?: AbortSignal;
  /** First poll interval; it grows to `maxPollIntervalMs`. Default 100 ms. */
  pollIntervalMs?: number;
  /** Default 2000 ms. */
  maxPollIntervalMs?: number;
}

/**
 * What the caller of a task wait is, for waits that do not pass options through: a Temporal activity sets
 * `beat` to its heartbeat (so a long task keeps the activity alive while it polls, and a dead worker is
 * noticed within the heartbeat timeout) and `signal` to its cancellation signal.
 */
export const taskWaitContext = new AsyncLocalStorage<{ beat?: () => void; signal?: AbortSignal }>();

/** A vSphere `*_Task`: one object to poll, whatever operation started it (govmomi object.Task). */
export class Task {
  constructor(
    private readonly client: PropertyReader,
    readonly ref: MoRef,
    /** The method that started the task, e.g. 'CreateVM_Task'. */
    readonly operation: string,
    /** What the task acts on, for error messages, e.g. "vm 'web01'". */
    readonly target: string,
  ) {}

  async info(): Promise<TaskInfo> {
    const props = await this.client.getProperties(this.ref, ['info']);
    const info = obj(props.info);
    const state = (str(info.state) || 'queued') as TaskState;
    const out: TaskInfo = { state };
    if (str(info.progress) !== '') out.progress = Number(str(info.progress));
    if (info.result !== undefined) out.result = info.result;
    if (state === 'error') {
      const lmf = obj(info.error);
      const fault = obj(lmf.fault);
      const faultType = fault.$type ?? 'UnknownFault';
      const text = str(lmf.localizedMessage) || str(fault.faultMessage);
      out.error = { fault: faultType, message: `${faultType}${text ? `: ${text}` : ''}${describeFault(fault)}` };
    }
    return out;
  }

  /**
   * Polls until the task ends. Returns `info.result` on success; a failed task becomes a
   * {@link VSphereFaultError} naming the operation, the fault and the target.
   */
  async wait(opts: TaskWaitOptions = {}): Promise<VimValue | undefined> {
    let interval = opts.pollIntervalMs ?? 100;
    const maxInterval = opts.maxPollIntervalMs ?? 2000;
    let lastProgress = -1;
    const ambient = taskWaitContext.getStore();
    const signal = opts.signal ?? ambient?.signal;
    for (;;) {
      signal?.throwIfAborted();
      ambient?.beat?.();
      const info = await this.info();
      if (info.state === 'success') {
        if (lastProgress !== 100) opts.onProgress?.(100);
        return info.result;
      }
      if (info.state === 'error') {
        const e = info.error ?? { fault: 'UnknownFault', message: 'UnknownFault' };
        throw new VSphereFaultError(e.fault, `${this.operation} failed: ${e.message} (${this.target})`);
      }
      if (info.progress !== undefined && info.progress !== lastProgress) {
        lastProgress = info.progress;
        opts.onProgress?.(info.progress);
      }
      await abortableSleep(interval, signal);
      interval = Math.min(maxInterval, Math.round(interval * 1.5));
    }
  }
}
