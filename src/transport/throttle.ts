/** Caps throughput at a byte rate by sleeping when ahead of schedule; 0 disables it. */
export class ByteRateLimiter {
  private readonly started = Date.now();
  private consumed = 0;
  constructor(private readonly bytesPerSecond: number) {}

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    if (this.bytesPerSecond <= 0) return;
    this.consumed += bytes;
    const dueMs = (this.consumed / this.bytesPerSecond) * 1000 - (Date.now() - this.started);
    if (dueMs > 5) await abortableSleep(dueMs, signal);
  }
}

export function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
