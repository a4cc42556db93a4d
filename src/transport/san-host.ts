import * as http from 'node:http';
import * as https from 'node:https';
import { FailureType, RestoreError } from '../domain/errors';
import type { VSphereSession } from '../vsphere/session';

/** One extent of a flat file on a VMFS-like datastore: file bytes [logical, +length) at LUN bytes [physical, +length). */
export interface SanExtent {
  logical: number;
  physical: number;
  length: number;
  /** Allocated but never written (lazy-zeroed): the host must zero it before the first SAN write. */
  unwritten: boolean;
}

export interface SanBlockMap {
  fileSize: number;
  extents: SanExtent[];
}

/**
 * What a SAN proxy asks the host for (VDDK does this through the host in a real product): the flat
 * extent's block map, the zeroing of lazy-zeroed blocks before their first write, and that the host drop
 * its cached view of the file once the LUN was written. The lab's vcsim serves these within a session
 * (src/lab/vcsim/san.go); `unavailable` tells whether a vCenter does.
 */
export class SanHost {
  constructor(
    private readonly client: VSphereSession,
    private readonly datastore: string,
    private readonly path: string,
  ) {}

  /**
   * Why the vCenter does not offer the host requests below in this session, or undefined when it does. The
   * lab's vcsim does; a real vCenter has no such service (a real SAN proxy reads the VMFS block map through
   * VDDK's SAN transport, which this build does not include), so direct SAN is not planned there and the
   * restore takes the next transport. A vCenter that does not answer the question is not offering it either:
   * the other transports may still do.
   */
  static async unavailable(client: VSphereSession, signal?: AbortSignal): Promise<string | undefined> {
    const host = client.url.host;
    try {
      const { status } = await request(client, 'GET', new URL('/vmrestore/san/service', client.url), signal);
      if (status === 200) return undefined;
      return `direct-san: vCenter ${host} offers no block map of a disk's LUN blocks (HTTP ${status}; a real vSphere needs VDDK's SAN transport, which this build does not include)`;
    } catch (err) {
      if ((err as Error).name === 'AbortError') throw err;
      return `direct-san: vCenter ${host} did not say whether it offers a block map of a disk's LUN blocks: ${(err as Error).message}`;
    }
  }

  private async call(method: 'GET' | 'POST', op: string, extra: Record<string, string> = {}, signal?: AbortSignal): Promise<string> {
    const url = new URL(`/vmrestore/san/${op}`, this.client.url);
    url.search = new URLSearchParams({ dsName: this.datastore, path: this.path, ...extra }).toString();
    const { status, body } = await request(this.client, method, url, signal).catch((err: Error) => {
      if (err.name === 'AbortError') throw err;
      throw new RestoreError(
        FailureType.TransportUnavailable,
        `direct-san: ${method} ${url.pathname} for [${this.datastore}] ${this.path}: ${err.message}`,
      );
    });
    if (status < 200 || status >= 300) {
      throw new RestoreError(
        FailureType.TransportUnavailable,
        `direct-san: the host has no block map for [${this.datastore}] ${this.path} (HTTP ${status}: ${body.trim().slice(0, 200)})`,
      );
    }
    return body;
  }

  async blockMap(signal?: AbortSignal): Promise<SanBlockMap> {
    return JSON.parse(await this.call('GET', 'map', {}, signal)) as SanBlockMap;
  }

  async zero(offset: number, length: number, signal?: AbortSignal): Promise<void> {
    await this.call('POST', 'zero', { offset: String(offset), length: String(length) }, signal);
  }

  async release(signal?: AbortSignal): Promise<void> {
    await this.call('POST', 'release', {}, signal);
  }
}

/** One request to the host within the session; the body as text. */
function request(
  client: VSphereSession,
  method: 'GET' | 'POST',
  url: URL,
  signal?: AbortSignal,
): Promise<{ status: number; body: string }> {
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(url, { method, agent: client.agent, headers: { Cookie: client.sessionCookie }, signal }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.setTimeout(60_000, () => req.destroy(new Error('no answer in 60 s')));
    req.on('error', reject);
    req.end();
  });
}

/** The LUN ranges holding file bytes [offset, offset + length), in order; undefined where a byte is not allocated. */
export function lunRanges(map: SanBlockMap, offset: number, length: number): SanExtent[] | undefined {
  const out: SanExtent[] = [];
  let at = offset;
  const end = offset + length;
  // Extents come sorted by logical offset; a binary search finds the first one that can hold `at`.
  let lo = 0;
  let hi = map.extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const e = map.extents[mid];
    if (e.logical + e.length <= at) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; at < end && i < map.extents.length; i++) {
    const e = map.extents[i];
    if (e.logical > at) return undefined;
    const n = Math.min(end, e.logical + e.length) - at;
    out.push({ logical: at, physical: e.physical + (at - e.logical), length: n, unwritten: e.unwritten });
    at += n;
  }
  return at >= end ? out : undefined;
}
