import net from 'node:net';

/**
 * A minimal QMP client: one request at a time, which is all the verifier needs (sampling the vCPU's
 * registers and asking qemu to quit).
 */
export class QmpClient {
  private buffer = '';
  private waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void } | undefined;
  private closed = false;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('close', () => {
      this.closed = true;
      this.waiting?.reject(new Error('QMP connection closed'));
      this.waiting = undefined;
    });
    socket.on('error', () => undefined);
  }

  /** Connects to a qemu started with `-qmp unix:PATH,server=on,wait=off`, retrying until it listens. */
  static async connect(socketPath: string, timeoutMs = 15_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<net.Socket>((resolve, reject) => {
          const s = net.connect(socketPath);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const client = new QmpClient(socket);
        await client.next(); // greeting
        await client.execute('qmp_capabilities');
        return client;
      } catch (e) {
        if (Date.now() > deadline)
          throw new Error(`QMP socket ${socketPath} did not answer within ${timeoutMs} ms: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    for (let nl = this.buffer.indexOf('\n'); nl >= 0; nl = this.buffer.indexOf('\n')) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as Record<string, unknown>;
      if ('event' in msg) continue;
      const w = this.waiting;
      this.waiting = undefined;
      if (!w) continue;
      if ('error' in msg) w.reject(new Error(`QMP error: ${JSON.stringify(msg.error)}`));
      else w.resolve('return' in msg ? msg.return : msg);
    }
  }

  private next(): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error('QMP connection closed'));
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const reply = this.next();
    this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    return reply;
  }

  /** Runs a human monitor command and returns its text. */
  async hmp(commandLine: string): Promise<string> {
    return String(await this.execute('human-monitor-command', { 'command-line': commandLine }));
  }

  close(): void {
    this.socket.destroy();
  }
}
