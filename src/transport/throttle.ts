import { abortableSleep } from '../abort';

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
