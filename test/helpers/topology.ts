import { execFile, execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { labConfigPath } from '../../src/config';
import { readLabState } from '../../src/lab';
import { pidAlive } from '../../src/lab/net';
import { ROOT, startWorkerProcess, type WorkerProcess } from './env';
import { skipWithout } from './requirements';
import { forward, reachable, type Forwarders } from './topology-forwarder';

/**
 * Hosts for real on one machine: `backup`, `repo01`, `proxy01`, `proxy02` (or the hosts asked for) as
 * network namespaces joined by veth pairs to one bridge, on a private /24 of 10.231.0.0/16.
 *
 * - `backup` is the root namespace: the lab (Temporal, vcsim, Azurite, the ARM simulator) already runs
 *   there on 127.0.0.1, and the control worker runs there as in the lab. Its address on the bridge is .1.
 * - Every other host is a namespace `vmrestore-<owner pid>-<host>` with its own loopback and an `eth0`
 *   (.11, .12, … in the order asked). Its processes also get a UTS namespace whose hostname is the
 *   host's name, so a worker's default Temporal identity (`pid@hostname`) says where it ran.
 * - The lab is reached from a namespace at the very addresses of the lab's config (127.0.0.1:port), so a
 *   worker there reads the lab's config unchanged, and TLS stays as the lab set it up (vcsim is pinned by
 *   thumbprint, with no hostname check; the ARM simulator's certificate names 127.0.0.1, which the Azure SDK
 *   checks; Azurite is plain http). Two TCP forwarders carry it: one in the namespace on its loopback
 *   towards the bridge address, one in the backup namespace on the bridge address towards loopback. The
 *   lab stays untouched, and every byte crosses the host's veth link, so cutting the link cuts it.
 * - Traffic between hosts (a proxy reading from `repo01`) goes straight over the bridge to `address(host)`.
 *
 * Needs root and iproute2 (`ip`, plus `unshare` from util-linux). `teardown()` removes everything; it
 * also runs when the process exits, and a build first removes what a killed run left (names carry the
 * owner's pid, so a concurrent run on another lab is left alone).
 */

export const BACKUP = 'backup';
const NETNS_PREFIX = 'vmrestore-';
/** Interfaces: the bridge `vmr<pid>`, root-side veth ends `vmr<pid>-<n>` (15 characters at most). */
const LINK_NAME = /^vmr(\d+)(?:-\d+)?$/;
const NETNS_NAME = /^vmrestore-(\d+)-[a-z0-9]+$/;
const HOST_NAME = /^[a-z][a-z0-9]{0,11}$/;

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall time from spawn to exit. */
  seconds: number;
}

export interface LinkCut {
  /** When the cut took effect (Date.now()). */
  at: number;
  /** Resolves when the link is back (after `forMs`, or when `restore()` or `restoreLink` is called). */
  restored: Promise<{ downMs: number }>;
  restore(): Promise<void>;
}

export interface Topology {
  /** `backup` and the namespaced hosts, in order. */
  readonly hosts: readonly string[];
  /** The /24 in use, e.g. 10.231.42.0/24. */
  readonly subnet: string;
  /** The lab ports reachable at 127.0.0.1 inside every namespace. */
  readonly forwardedPorts: readonly number[];
  /** The host's address on the bridge (backup: the bridge itself). */
  address(host: string): string;
  /** The network namespace's name (`ip netns exec NAME …`); undefined for backup (the root namespace). */
  netns(host: string): string | undefined;
  /** The command line that runs `cmd args` on `host` (its namespace and hostname). */
  command(host: string, cmd: string, args?: readonly string[]): { command: string; args: string[] };
  /** Starts `cmd` on `host`; killed at teardown if still running. */
  spawn(host: string, cmd: string, args?: readonly string[], opts?: SpawnOptions): ChildProcess;
  /** Runs `cmd` on `host` to its end; never rejects on a non-zero exit (see `code`). */
  exec(host: string, cmd: string, args?: readonly string[], opts?: { env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<ExecResult>;
  /**
   * Runs `cmd` on `host` and returns its wall time; rejects when it fails (a bench must not time a failure).
   * E.g. `(await topo.time('proxy01', 'curl', ['-sk', '-o', '/dev/null', url])).seconds`, against the same
   * bytes read through the repository data mover from proxy01.
   */
  time(host: string, cmd: string, args?: readonly string[], opts?: { env?: NodeJS.ProcessEnv; timeoutMs?: number }): Promise<ExecResult>;
  /**
   * A configuration of the host's own: the lab's config file as `edit` changes it (a proxy's transports
   * or mounts, say), written where the loader reads it as the lab's (its test switches and env knobs
   * stay). Returns the environment that points a process at it: pass it to `startWorker`. Removed at
   * teardown.
   */
  hostConfig(host: string, edit: (config: Record<string, unknown>) => Record<string, unknown>): NodeJS.ProcessEnv;
  /** `vmrestore worker` on `host` (test/helpers/env.ts startWorkerProcess, run in the host's namespace). */
  startWorker(host: string, taskQueue: string, env?: NodeJS.ProcessEnv, args?: string[]): Promise<WorkerProcess>;
  /**
   * Cuts a link. Without `peer`: the host's veth link goes down on the bridge side (the host sees no
   * carrier, packets are dropped silently, TCP connections stall and retransmit, as with a pulled cable);
   * the host is cut from every other host and from the lab. With `peer`: blackhole routes on both sides
   * cut only the traffic between the two hosts (senders get an error for new packets; existing TCP
   * connections stall). With `forMs`, the link comes back by itself.
   */
  cutLink(host: string, opts?: { peer?: string; forMs?: number }): Promise<LinkCut>;
  restoreLink(host: string, peer?: string): Promise<void>;
  /** Bytes that crossed the host's link, as the host sees it (sent = out of the host). */
  linkBytes(host: string): { sent: number; received: number };
  /** Processes running in the host's namespace. */
  pids(host: string): number[];
  /** Removes namespaces, links, forwarders and the processes in the namespaces; idempotent. */
  teardown(): Promise<void>;
}

export interface TopologyOptions {
  /** Namespaced hosts besides backup (default repo01, proxy01, proxy02). */
  hosts?: string[];
  /** Loopback ports of the backup host to reach from every namespace; default: the running lab's. */
  ports?: number[];
  /** More loopback ports besides the lab's (a second Temporal server, say). */
  extraPorts?: number[];
}

/** The skip value for topology tests: root, `ip` and `unshare` (under CI=true, their absence fails). */
export function noTopology(): string | false {
  let tools = true;
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('unshare', ['--version'], { stdio: 'ignore' });
  } catch {
    tools = false;
  }
  return skipWithout(process.getuid?.() === 0 && tools, 'needs root, iproute2 (ip) and util-linux (unshare) for network namespaces');
}

function ip(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

function ipQuiet(args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: 'ignore' });
  } catch {
    // Already gone.
  }
}

function killAll(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
}

function netnsList(): string[] {
  return ip(['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean);
}

function linkNames(): string[] {
  return ip(['-o', 'link', 'show'])
    .split('\n')
    .map((l) => /^\d+:\s+([^:@\s]+)/.exec(l)?.[1])
    .filter((n): n is string => !!n);
}

/** True while `pid` runs: a process that has exited but is not yet reaped (a zombie) does not count. */
export function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function netnsPids(name: string): number[] {
  try {
    return execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/** Namespaces and links whose owner process is gone: what a killed run left behind. */
export function leftovers(owner?: number): { netns: string[]; links: string[] } {
  const stale = (pid: number) => (owner === undefined ? !pidAlive(pid) : pid === owner);
  return {
    netns: netnsList().filter((n) => {
      const m = NETNS_NAME.exec(n);
      return !!m && stale(Number(m[1]));
    }),
    links: linkNames().filter((n) => {
      const m = LINK_NAME.exec(n);
      return !!m && stale(Number(m[1]));
    }),
  };
}

/** Removes what `leftovers(owner)` lists: processes in the namespaces first, then namespaces and links. */
export function removeLeftovers(owner?: number): { netns: string[]; links: string[] } {
  const found = leftovers(owner);
  const stale = (pid: number) => (owner === undefined ? !pidAlive(pid) : pid === owner);
  for (const n of found.netns) killAll(netnsPids(n));
  for (const n of found.netns) ipQuiet(['netns', 'delete', n]);
  // The bridge-side veth ends go with their namespace; the bridge and anything left go here.
  for (const l of found.links) ipQuiet(['link', 'delete', l]);
  for (const d of readdirSync(os.tmpdir())) {
    const m = /^vmrestore-hosts-(\d+)$/.exec(d);
    if (m && stale(Number(m[1]))) rmSync(path.join(os.tmpdir(), d), { recursive: true, force: true });
  }
  return found;
}

/** A /24 in 10.231.0.0/16 that no interface or route of the root namespace uses yet. */
function freeSubnet(): number {
  const used = ip(['-4', '-o', 'addr', 'show']) + ip(['-4', 'route', 'show', 'table', 'all']);
  const start = 20 + (process.pid % 200);
  for (let i = 0; i < 230; i++) {
    const n = 20 + ((start - 20 + i) % 230);
    if (!used.includes(`10.231.${n}.`)) return n;
  }
  throw new Error('no free /24 left in 10.231.0.0/16 for the test topology');
}

function counter(iface: string, what: 'rx_bytes' | 'tx_bytes'): number {
  return Number(readFileSync(`/sys/class/net/${iface}/statistics/${what}`, 'utf8'));
}

function labPorts(): number[] {
  const s = readLabState();
  const ports = [s.temporal?.port, s.vsphere?.port, s.blob?.port, typeof s.azure?.port === 'number' ? s.azure.port : undefined];
  const found = ports.filter((p): p is number => typeof p === 'number');
  if (found.length === 0) throw new Error('the lab is not running (no ports in its state): call labUp() before buildTopology()');
  return found;
}

function waitForLine(child: ChildProcess, what: string, pattern: RegExp, timeoutMs: number): Promise<void> {
  let out = '';
  return new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${what} did not start in ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    const onData = (d: Buffer) => {
      out += d.toString();
      if (pattern.test(out)) {
        clearTimeout(t);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`${what} exited with ${code}:\n${out}`));
    });
  });
}

let liveTopology = false;

/** Builds the topology; rejects (removing what it built) when any step fails. */
export async function buildTopology(opts: TopologyOptions = {}): Promise<Topology> {
  const names = opts.hosts ?? ['repo01', 'proxy01', 'proxy02'];
  for (const h of names) {
    if (!HOST_NAME.test(h) || h === BACKUP) {
      throw new Error(`host name '${h}' must be 1-12 lowercase letters and digits, starting with a letter, and not '${BACKUP}'`);
    }
  }
  if (new Set(names).size !== names.length) throw new Error(`host names repeat: ${names.join(', ')}`);
  if (names.length > 200) throw new Error(`at most 200 hosts (asked ${names.length})`);
  const ports = [...new Set([...(opts.ports ?? labPorts()), ...(opts.extraPorts ?? [])])];
  // Names carry the pid: one topology per process at a time.
  if (liveTopology) throw new Error('this process already has a topology: tear it down before building another');
  removeLeftovers();

  const owner = process.pid;
  const net = freeSubnet();
  const subnet = `10.231.${net}.0/24`;
  const bridge = `vmr${owner}`;
  const hosts = [BACKUP, ...names];
  const addr = new Map<string, string>([[BACKUP, `10.231.${net}.1`]]);
  const nsName = new Map<string, string>();
  const veth = new Map<string, string>();
  names.forEach((h, i) => {
    addr.set(h, `10.231.${net}.${11 + i}`);
    nsName.set(h, `${NETNS_PREFIX}${owner}-${h}`);
    veth.set(h, `${bridge}-${i + 1}`);
  });
  const configRoot = path.join(os.tmpdir(), `vmrestore-hosts-${owner}`);
  const children = new Set<ChildProcess>();
  const cuts = new Map<string, { timer?: NodeJS.Timeout; done: (downMs: number) => void; at: number; undo: () => void }>();
  let rootForwarders: Forwarders | undefined;
  let down = false;

  const known = (host: string): void => {
    if (!addr.has(host)) throw new Error(`unknown host '${host}' (known: ${hosts.join(', ')})`);
  };
  const command = (host: string, cmd: string, args: readonly string[] = []): { command: string; args: string[] } => {
    known(host);
    // A UTS namespace of its own, named after the host (`hostname` there is the host's name).
    const uts = ['--uts', '--', '/bin/sh', '-c', 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"', host, cmd, ...args];
    const ns = nsName.get(host);
    return ns ? { command: 'ip', args: ['netns', 'exec', ns, 'unshare', ...uts] } : { command: 'unshare', args: uts };
  };
  const spawnOn = (host: string, cmd: string, args: readonly string[] = [], sopts: SpawnOptions = {}): ChildProcess => {
    if (down) throw new Error('the topology was torn down');
    const c = command(host, cmd, args);
    const child = spawn(c.command, c.args, { stdio: ['ignore', 'pipe', 'pipe'], ...sopts });
    children.add(child);
    child.once('exit', () => children.delete(child));
    return child;
  };
  const exec: Topology['exec'] = (host, cmd, args = [], eopts = {}) => {
    const c = command(host, cmd, args);
    const t0 = process.hrtime.bigint();
    return new Promise((resolve) => {
      execFile(
        c.command,
        c.args,
        { env: eopts.env ?? process.env, timeout: eopts.timeoutMs ?? 0, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' },
        (err, stdout, stderr) => {
          const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
          const e = err as (Error & { code?: number | string; signal?: NodeJS.Signals }) | null;
          resolve({
            code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
            signal: e?.signal ?? null,
            stdout,
            stderr,
            seconds,
          });
        },
      );
    });
  };
  const peerRoutes = (host: string, peer: string): { ns: string | undefined; to: string }[] => [
    { ns: nsName.get(host), to: addr.get(peer)! },
    { ns: nsName.get(peer), to: addr.get(host)! },
  ];
  const routeCmd = (ns: string | undefined, verb: 'add' | 'delete', to: string) => [
    ...(ns ? ['-n', ns] : []),
    'route',
    verb,
    'blackhole',
    `${to}/32`,
  ];

  const teardownSync = (): void => {
    if (down) return;
    down = true;
    liveTopology = false;
    process.removeListener('exit', teardownSync);
    for (const c of cuts.values()) {
      clearTimeout(c.timer);
      c.done(Date.now() - c.at);
    }
    cuts.clear();
    rootForwarders?.close();
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const ns of nsName.values()) killAll(netnsPids(ns));
    for (const ns of nsName.values()) ipQuiet(['netns', 'delete', ns]);
    for (const v of veth.values()) ipQuiet(['link', 'delete', v]);
    ipQuiet(['link', 'delete', bridge]);
    // Blackholes towards this subnet in the root namespace (cuts between a host and backup).
    for (const h of names) ipQuiet(routeCmd(undefined, 'delete', addr.get(h)!));
    rmSync(configRoot, { recursive: true, force: true });
  };
  process.on('exit', teardownSync);
  liveTopology = true;

  const topo: Topology = {
    hosts,
    subnet,
    forwardedPorts: ports,
    address(host) {
      known(host);
      return addr.get(host)!;
    },
    netns(host) {
      known(host);
      return nsName.get(host);
    },
    command,
    spawn: spawnOn,
    exec,
    async time(host, cmd, args = [], eopts = {}) {
      const r = await exec(host, cmd, args, eopts);
      if (r.code !== 0) {
        throw new Error(`${cmd} ${args.join(' ')} on ${host} failed (exit ${r.code ?? r.signal}):\n${r.stderr.slice(-2000)}`);
      }
      return r;
    },
    hostConfig(host, edit) {
      known(host);
      const dir = path.join(configRoot, host);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const config = edit(JSON.parse(readFileSync(labConfigPath(), 'utf8')) as Record<string, unknown>);
      writeFileSync(path.join(dir, 'vmrestore.config.json'), JSON.stringify(config, null, 2), { mode: 0o600 });
      return { VMRESTORE_LAB_DIR: dir };
    },
    startWorker(host, taskQueue, env = {}, args = []) {
      known(host);
      return startWorkerProcess(taskQueue, env, args, (cmd, cargs) => command(host, cmd, cargs));
    },
    async cutLink(host, copts = {}) {
      known(host);
      const peer = copts.peer;
      if (peer !== undefined) known(peer);
      if (host === BACKUP && peer === undefined) throw new Error('backup is the bridge; cut a host, or a host and its peer');
      if (peer === host) throw new Error(`cannot cut ${host} from itself`);
      const key = peer === undefined ? host : [host, peer].sort().join('|');
      if (cuts.has(key)) throw new Error(`the link ${key} is already cut`);
      if (peer === undefined) ip(['link', 'set', veth.get(host)!, 'down']);
      else for (const r of peerRoutes(host, peer)) ip(routeCmd(r.ns, 'add', r.to));
      const undo = () => {
        if (peer === undefined) ip(['link', 'set', veth.get(host)!, 'up']);
        else for (const r of peerRoutes(host, peer)) ipQuiet(routeCmd(r.ns, 'delete', r.to));
      };
      const at = Date.now();
      let done!: (downMs: number) => void;
      const restored = new Promise<{ downMs: number }>((r) => (done = (downMs) => r({ downMs })));
      const entry = { at, done, undo, timer: undefined as NodeJS.Timeout | undefined };
      cuts.set(key, entry);
      const restore = async () => {
        if (cuts.get(key) !== entry) return;
        clearTimeout(entry.timer);
        cuts.delete(key);
        undo();
        done(Date.now() - at);
      };
      if (copts.forMs !== undefined) entry.timer = setTimeout(() => void restore(), copts.forMs);
      return { at, restored, restore };
    },
    async restoreLink(host, peer) {
      const key = peer === undefined ? host : [host, peer].sort().join('|');
      const c = cuts.get(key);
      if (!c) throw new Error(`the link ${key} is not cut`);
      clearTimeout(c.timer);
      cuts.delete(key);
      c.undo();
      c.done(Date.now() - c.at);
    },
    linkBytes(host) {
      known(host);
      if (host === BACKUP) return { sent: counter(bridge, 'tx_bytes'), received: counter(bridge, 'rx_bytes') };
      // The bridge-side end: what it receives, the host sent.
      return { sent: counter(veth.get(host)!, 'rx_bytes'), received: counter(veth.get(host)!, 'tx_bytes') };
    },
    pids(host) {
      known(host);
      const ns = nsName.get(host);
      if (!ns) throw new Error('backup is the root namespace: every process runs there');
      return netnsPids(ns);
    },
    async teardown() {
      const pids = [...nsName.values()].flatMap((ns) => netnsPids(ns));
      for (const c of children) if (c.pid) pids.push(c.pid);
      teardownSync();
      // SIGKILL is delivered at once but the process ends a moment later: wait until each has exited.
      for (const end = Date.now() + 10_000; pids.some(running) && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
    },
  };

  try {
    // Bridged frames skip the root namespace's iptables (br_netfilter): a host firewall with a DROP
    // FORWARD policy (as Docker sets) would otherwise cut the hosts off from each other.
    ip(['link', 'add', bridge, 'type', 'bridge', 'nf_call_iptables', '0', 'nf_call_ip6tables', '0', 'nf_call_arptables', '0']);
    ip(['addr', 'add', `${addr.get(BACKUP)}/24`, 'dev', bridge]);
    ip(['link', 'set', bridge, 'up']);
    for (const h of names) {
      const ns = nsName.get(h)!;
      ip(['netns', 'add', ns]);
      ip(['link', 'add', veth.get(h)!, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      ip(['link', 'set', veth.get(h)!, 'master', bridge, 'up']);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
      ip(['-n', ns, 'addr', 'add', `${addr.get(h)}/24`, 'dev', 'eth0']);
      ip(['-n', ns, 'link', 'set', 'eth0', 'up']);
    }
    rootForwarders = await forward(addr.get(BACKUP)!, '127.0.0.1', ports);
    const script = path.join(ROOT, 'test', 'helpers', 'topology-forwarder.ts');
    await Promise.all(
      (ports.length > 0 ? names : []).map((h) => {
        const child = spawnOn(h, process.execPath, ['--import', 'tsx', script, '127.0.0.1', addr.get(BACKUP)!, ...ports.map(String)], {
          cwd: ROOT,
        });
        // It starts once the bridge address answers from inside the namespace: the link works.
        return waitForLine(child, `forwarder on ${h}`, /^forwarding /m, 60_000);
      }),
    );
  } catch (err) {
    teardownSync();
    throw err;
  }
  return topo;
}

export { reachable };
