import net from 'node:net';

/**
 * TCP forwarders: `listenHost:port` → `targetHost:port` for each port. The topology runs one set in the
 * backup (root) namespace on the bridge address, towards the lab on loopback, and one inside each host
 * namespace on that namespace's loopback, towards the bridge address: so a process in a namespace reaches
 * the lab at the very addresses of the lab's config, and every byte crosses the host's veth link.
 */
export interface Forwarders {
  close(): void;
}

export function forward(listenHost: string, targetHost: string, ports: readonly number[]): Promise<Forwarders> {
  const servers: net.Server[] = [];
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  };
  const started = ports.map(
    (port) =>
      new Promise<void>((resolve, reject) => {
        const server = net.createServer({ allowHalfOpen: true, noDelay: true }, (inbound) => {
          track(inbound);
          const outbound = net.connect({ host: targetHost, port, allowHalfOpen: true, noDelay: true });
          track(outbound);
          // Whatever fails on one side closes the other, as a broken path would.
          inbound.on('error', () => outbound.destroy());
          outbound.on('error', () => inbound.destroy());
          inbound.pipe(outbound);
          outbound.pipe(inbound);
        });
        servers.push(server);
        server.once('error', (err) => reject(new Error(`cannot forward ${listenHost}:${port} → ${targetHost}:${port}: ${err.message}`)));
        server.listen(port, listenHost, () => resolve());
      }),
  );
  const fwd: Forwarders = {
    close() {
      for (const s of servers) s.close();
      for (const s of sockets) s.destroy();
    },
  };
  return Promise.all(started).then(
    () => fwd,
    (err: unknown) => {
      fwd.close();
      throw err;
    },
  );
}

/** Resolves once a TCP connection to host:port opens (retrying for `timeoutMs`): the path there works. */
export async function reachable(host: string, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      await new Promise<void>((resolve, reject) => {
        const s = net.connect({ host, port, timeout: 1000 }, () => {
          s.destroy();
          resolve();
        });
        s.once('timeout', () => s.destroy(new Error('connect timed out')));
        s.once('error', reject);
      });
      return;
    } catch (err) {
      last = (err as Error).message;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${host}:${port} not reachable in ${timeoutMs} ms (${last})`);
}

// Run as a process inside a namespace: forwarder.ts LISTEN_HOST TARGET_HOST PORT...
if (require.main === module) {
  const [listenHost, targetHost, ...ports] = process.argv.slice(2);
  const numbers = ports.map(Number);
  if (!listenHost || !targetHost || numbers.length === 0 || numbers.some((p) => !Number.isInteger(p) || p <= 0 || p > 65535)) {
    console.error(`usage: topology-forwarder LISTEN_HOST TARGET_HOST PORT... (got ${process.argv.slice(2).join(' ')})`);
    process.exit(2);
  }
  void (async () => {
    try {
      await Promise.all(numbers.map((p) => reachable(targetHost, p, 10_000)));
      await forward(listenHost, targetHost, numbers);
      console.log(`forwarding ${listenHost} → ${targetHost} for ${numbers.join(', ')}`);
    } catch (err) {
      console.error((err as Error).message);
      process.exit(1);
    }
  })();
}
