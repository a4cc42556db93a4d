import type { LeaseTarget } from './lease';
import type { ProxyCandidate, TransportMode } from './vsphere';

/**
 * vSphere proxy task slots: one counting lease per proxy (capacity `maxTasks`), held by each disk while a
 * proxy writes it, and the choice of the proxy a disk goes to. Pure, so workflow and activity share it.
 */

const ORDER: TransportMode[] = ['direct-san', 'direct-nas', 'hotadd', 'nbd'];

/** The lease that counts the disks proxy `name` is writing. */
export function proxySlotTarget(name: string): LeaseTarget {
  return { kind: 'limit', name: `vsphere-proxy-${name}`, resourceGroup: '', vmName: `vSphere proxy ${name}`, idleTimeoutMs: 0 };
}

/** What the control side sees of one proxy: whether a worker polls its queue, and its slots in use. */
export interface ProxyStatus {
  name: string;
  /** A worker polled the proxy's activity queue recently (and after the proxy was last lost, if it was). */
  live: boolean;
  /** Identities of the workers polling it. */
  pollers: string[];
  inUse: number;
}

/** How long after its last poll a proxy worker still counts as live: longer than one long poll (about 60 s). */
export const PROXY_POLL_FRESH_MS = 90_000;

/** A small stable string hash (FNV-1a), for spreading ties. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * The proxy a disk goes to: among live proxies with a free slot, the best transport, then the least
 * loaded (so one VM's disks and concurrent restores spread). Equals are taken in the configured order
 * rotated by `seed` (the disk's holder name): restores that look at the same moment, and so see the same
 * loads, mostly pick different proxies.
 */
export function chooseProxy(candidates: ProxyCandidate[], status: Record<string, ProxyStatus>, seed = ''): ProxyCandidate | undefined {
  const rank = (c: ProxyCandidate) => ORDER.indexOf(c.transports[0]);
  const load = (c: ProxyCandidate) => (status[c.name]?.inUse ?? 0) / c.maxTasks;
  const n = candidates.length;
  const offset = seed ? hash(seed) % n : 0;
  return candidates
    .map((c, i) => ({ c, turn: (i - offset + n) % n }))
    .filter(({ c }) => status[c.name]?.live && status[c.name].inUse < c.maxTasks)
    .sort((a, b) => rank(a.c) - rank(b.c) || load(a.c) - load(b.c) || a.turn - b.turn)[0]?.c;
}

/** Why no proxy was chosen, in words: none live, or all live ones busy. */
export function whyNoProxy(candidates: ProxyCandidate[], status: Record<string, ProxyStatus>): { live: boolean; text: string } {
  const live = candidates.filter((c) => status[c.name]?.live);
  if (live.length === 0) {
    return { live: false, text: `no worker polls the task queue of proxy ${candidates.map((c) => `'${c.name}'`).join(', ')}` };
  }
  return {
    live: true,
    text: `every live proxy is busy (${live.map((c) => `${c.name} ${status[c.name].inUse}/${c.maxTasks}`).join(', ')} tasks)`,
  };
}
