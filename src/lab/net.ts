import net from 'node:net';
import tls from 'node:tls';
import http from 'node:http';
import https from 'node:https';

export function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** The preferred port when free, else any free port; `taken` avoids handing out one port twice. */
export async function pickPort(preferred: number, taken: Set<number>, host = '127.0.0.1'): Promise<number> {
  if (preferred > 0 && !taken.has(preferred) && (await isPortFree(preferred, host))) {
    taken.add(preferred);
    return preferred;
  }
  for (;;) {
    const p = await freePort(host);
    if (!taken.has(p)) {
      taken.add(p);
      return p;
    }
  }
}

/** The port VMRESTORE_LAB_<name>_PORT asks for, else `dflt` (0: any free port). */
export function envPort(name: string, dflt: number): number {
  const v = process.env[`VMRESTORE_LAB_${name}_PORT`];
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new Error(`VMRESTORE_LAB_${name}_PORT: expected a port number, got '${v}'`);
  return n;
}

/** GET a URL and resolve with the status code (any status means the server answers). */
export function httpStatus(url: string, timeoutMs = 2000): Promise<number> {
  return new Promise((resolve, reject) => {
    const mod = url.startsWith('https:') ? https : http;
    const req = mod.get(url, { timeout: timeoutMs, rejectUnauthorized: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** SHA-256 fingerprint of a TLS server's leaf certificate, as AA:BB:... */
export function tlsFingerprint(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host, port, rejectUnauthorized: false, servername: undefined }, () => {
      const cert = sock.getPeerCertificate();
      sock.end();
      resolve(cert.fingerprint256);
    });
    sock.on('error', reject);
  });
}

export async function waitFor(
  what: string,
  check: () => Promise<boolean>,
  opts: { timeoutMs: number; intervalMs?: number; logFile?: string; isAlive?: () => boolean },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  let lastErr = '';
  while (Date.now() < deadline) {
    try {
      if (await check()) return;
    } catch (err) {
      lastErr = (err as Error).message;
    }
    if (opts.isAlive && !opts.isAlive()) {
      throw new Error(`${what} exited before it was ready${opts.logFile ? `; see ${opts.logFile}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 200));
  }
  throw new Error(`${what} not ready after ${opts.timeoutMs} ms (${lastErr || 'no answer'})${opts.logFile ? `; see ${opts.logFile}` : ''}`);
}

/** Stops a lab process and its process group (they are spawned detached) and waits until it is gone. */
export async function stopProcess(pid: number, signal: NodeJS.Signals = 'SIGKILL', timeoutMs = 15_000): Promise<void> {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      return;
    }
  }
  const deadline = Date.now() + timeoutMs;
  while (pidAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  if (pidAlive(pid)) {
    if (signal === 'SIGKILL') throw new Error(`lab process ${pid} did not exit`);
    await stopProcess(pid, 'SIGKILL', timeoutMs);
  }
}

/**
 * Whether the lab's recorded process can be reused: alive and answering `ready` within `graceMs` (a
 * loaded machine answers slowly). One alive but silent is stopped first, since a second server on the
 * same database or data folder would corrupt it.
 */
export async function reuseOrStop(
  what: string,
  pid: number | undefined,
  ready: () => Promise<boolean>,
  log: (s: string) => void,
  graceMs = 60_000,
): Promise<boolean> {
  if (!pid || !pidAlive(pid)) return false;
  try {
    await waitFor(what, ready, { timeoutMs: graceMs, intervalMs: 500, isAlive: () => pidAlive(pid) });
    return true;
  } catch {
    if (!pidAlive(pid)) return false;
    log(`${what}: pid ${pid} is running but does not answer; stopping it before starting a new one`);
    await stopProcess(pid);
    return false;
  }
}

export function pidAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
