/**
 * Reads a managed disk the way Azure lets one read it from outside a VM: grant read access (a SAS URL on
 * the disk's export, a fixed VHD: data then a 512-byte footer), read ranges of it over HTTPS, and revoke
 * the access afterwards, also when the reading failed, since a disk with an active SAS cannot be attached
 * or started. The SAS query is a secret: it is never logged, put in an error or returned.
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Readable } from 'node:stream';
import { azureFailure, FailureType, isTransientAzureStatus, RestoreError } from '../domain/errors';
import type { ArmClients } from './arm-clients';
import { VHD_FOOTER_SIZE } from './vhd';
import type { DataRange } from '../sparse-file';

export interface ManagedDiskRef {
  subscriptionId: string;
  resourceGroup: string;
  name: string;
}

/** Splits `/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/disks/NAME`. */
export function parseManagedDiskId(diskId: string): ManagedDiskRef {
  const m = /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Compute\/disks\/([^/]+)$/i.exec(diskId);
  if (!m) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `'${diskId}' is not a managed disk id (/subscriptions/…/resourceGroups/RG/providers/Microsoft.Compute/disks/NAME)`,
    );
  }
  return { subscriptionId: m[1], resourceGroup: m[2], name: m[3] };
}

export interface ManagedDiskReadOptions {
  /** How long the read SAS is valid (default 3600 s); it also bounds how long a failed revoke leaves it open. */
  durationSeconds?: number;
  /** PEM of a CA to trust for the SAS host (the lab's simulator); otherwise Node's trust store. */
  caCertPath?: string;
  signal?: AbortSignal;
}

export interface ManagedDiskReader {
  readonly diskId: string;
  /** Bytes served through the SAS: the disk's data followed by its 512-byte fixed-VHD footer. */
  readonly vhdSize: number;
  /** The disk's data alone (what a VM sees as the device). */
  readonly dataSize: number;
  /** Scheme, host and path of the SAS URL without its query: safe to log. */
  readonly location: string;
  /** Reads `length` bytes at `offset` of the VHD (both within `vhdSize`). */
  read(offset: number, length: number): Promise<Buffer>;
  /** The same bytes as a stream, for copying large ranges without holding them in memory. */
  stream(offset: number, length: number): Promise<Readable>;
  /**
   * The ranges of the disk's data that hold written pages (Get Page Ranges on the export, one window at
   * a time), merged, within the data (the footer left out); everything else reads as zeros.
   */
  dataRanges(): Promise<DataRange[]>;
}

/** Get Page Ranges asks for at most this much of the disk at once: a fragmented disk's list stays small. */
const PAGE_LIST_WINDOW = 1024 * 1024 * 1024;

/**
 * Grants read access to the managed disk `diskId`, hands a reader to `use`, and revokes the access when
 * `use` settles. A revoke that fails after `use` succeeded is thrown (the disk stays ActiveSAS until the
 * SAS expires); after `use` failed, `use`'s error is the one thrown.
 */
export async function withManagedDiskRead<T>(
  clients: Pick<ArmClients, 'compute'>,
  diskId: string,
  use: (reader: ManagedDiskReader) => Promise<T>,
  opts: ManagedDiskReadOptions = {},
): Promise<T> {
  const ref = parseManagedDiskId(diskId);
  const durationInSeconds = opts.durationSeconds ?? 3600;
  if (!Number.isInteger(durationInSeconds) || durationInSeconds <= 0) {
    throw new RestoreError(FailureType.InvalidRequest, `durationSeconds must be a positive whole number, got ${durationInSeconds}`);
  }
  const ca = opts.caCertPath ? readCa(opts.caCertPath) : undefined;
  let sas: string | undefined;
  try {
    const granted = await clients.compute.disks.grantAccess(
      ref.resourceGroup,
      ref.name,
      { access: 'Read', durationInSeconds },
      { abortSignal: opts.signal },
    );
    sas = granted.accessSAS;
  } catch (err) {
    // An aborted grant may still complete in Azure: do not leave the disk exported.
    if (opts.signal?.aborted) await revoke(clients, ref, diskId).catch(() => undefined);
    throw armError(`granting read access to managed disk '${diskId}'`, err);
  }
  let result: T;
  const agent = new https.Agent({ keepAlive: true, ...(ca ? { ca } : {}) });
  try {
    if (!sas) throw new RestoreError(FailureType.AzureFault, `granting read access to managed disk '${diskId}' returned no accessSAS`);
    const reader = await openReader(diskId, sas, agent, opts.signal);
    result = await use(reader);
  } catch (err) {
    await revoke(clients, ref, diskId).catch(() => undefined);
    throw err;
  } finally {
    agent.destroy();
  }
  await revoke(clients, ref, diskId);
  return result;
}

function readCa(file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new RestoreError(FailureType.Configuration, `cannot read the CA certificate ${file}: ${(err as Error).message}`);
  }
}

async function revoke(clients: Pick<ArmClients, 'compute'>, ref: ManagedDiskRef, diskId: string): Promise<void> {
  try {
    await clients.compute.disks.revokeAccess(ref.resourceGroup, ref.name);
  } catch (err) {
    throw armError(`revoking read access to managed disk '${diskId}'`, err);
  }
}

function armError(what: string, err: unknown): RestoreError {
  if (err instanceof RestoreError) return err;
  const e = err as { statusCode?: number; code?: string; message?: string };
  return azureFailure(`${what} failed: ${e?.code ? `${e.code}: ` : ''}${e?.message ?? String(err)}`, isTransientAzureStatus(e?.statusCode));
}

/** The part of a SAS URL that may be shown: everything but the query. */
export function redactSas(sasUrl: string): string {
  try {
    const u = new URL(sasUrl);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(unparseable SAS URL)';
  }
}

interface SasResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: http.IncomingMessage;
}

async function openReader(diskId: string, sas: string, httpsAgent: https.Agent, signal?: AbortSignal): Promise<ManagedDiskReader> {
  const url = new URL(sas);
  const location = redactSas(sas);
  const agent = url.protocol === 'https:' ? httpsAgent : undefined;
  const pageListUrl = new URL(url);
  pageListUrl.searchParams.set('comp', 'pagelist');
  const request = (method: 'GET' | 'HEAD', range?: { offset: number; length: number }, target = url): Promise<SasResponse> =>
    new Promise((resolve, reject) => {
      const headers: Record<string, string> = { 'x-ms-version': '2018-03-28' };
      if (range) headers['x-ms-range'] = `bytes=${range.offset}-${range.offset + range.length - 1}`;
      const mod = url.protocol === 'https:' ? https : http;
      const req = mod.request(target, { method, headers, agent, signal }, (res) =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res }),
      );
      // Node's errors name host and port, never the query.
      req.on('error', (err) => reject(new RestoreError(FailureType.AzureTransient, `reading ${location}: ${err.message}`, false)));
      req.end();
    });
  const failure = async (what: string, r: SasResponse): Promise<RestoreError> => {
    r.body.resume();
    const code = r.headers['x-ms-error-code'];
    return azureFailure(
      `${what} of managed disk '${diskId}' through ${location}: HTTP ${r.status}${code ? ` ${String(code)}` : ''}`,
      isTransientAzureStatus(r.status),
    );
  };

  const head = await request('HEAD');
  if (head.status !== 200) throw await failure('HEAD', head);
  head.body.resume();
  const vhdSize = Number(head.headers['content-length']);
  if (!Number.isSafeInteger(vhdSize) || vhdSize <= VHD_FOOTER_SIZE) {
    throw new RestoreError(FailureType.AzureFault, `${location} reports size ${String(head.headers['content-length'])}, not a VHD`);
  }
  const check = (offset: number, length: number): void => {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > vhdSize) {
      throw new RestoreError(
        FailureType.InvalidRequest,
        `range ${offset}+${length} is outside managed disk '${diskId}' (${vhdSize} bytes incl. footer)`,
      );
    }
  };
  const stream = async (offset: number, length: number): Promise<Readable> => {
    check(offset, length);
    const r = await request('GET', { offset, length });
    if (r.status !== 206 && !(r.status === 200 && offset === 0 && length === vhdSize)) throw await failure(`GET ${offset}+${length}`, r);
    if (Number(r.headers['content-length']) !== length) {
      r.body.destroy();
      throw new RestoreError(
        FailureType.AzureTransient,
        `${location} answered ${String(r.headers['content-length'])} bytes for a ${length}-byte range`,
        false,
      );
    }
    return r.body;
  };
  const dataSize = vhdSize - VHD_FOOTER_SIZE;
  const dataRanges = async (): Promise<DataRange[]> => {
    const out: DataRange[] = [];
    for (let at = 0; at < dataSize; at += PAGE_LIST_WINDOW) {
      const length = Math.min(PAGE_LIST_WINDOW, dataSize - at);
      const r = await request('GET', { offset: at, length }, pageListUrl);
      if (r.status !== 200) throw await failure(`Get Page Ranges ${at}+${length}`, r);
      let xml = '';
      for await (const c of r.body) xml += (c as Buffer).toString('utf8');
      for (const m of xml.matchAll(/<PageRange><Start>(\d+)<\/Start><End>(\d+)<\/End><\/PageRange>/g)) {
        const start = Math.max(Number(m[1]), at);
        const end = Math.min(Number(m[2]) + 1, at + length);
        if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start >= end) continue;
        const last = out[out.length - 1];
        if (last && last.offset + last.length === start) last.length += end - start;
        else out.push({ offset: start, length: end - start });
      }
    }
    return out;
  };
  return {
    diskId,
    vhdSize,
    dataSize,
    location,
    stream,
    dataRanges,
    async read(offset, length) {
      const body = await stream(offset, length);
      const chunks: Buffer[] = [];
      for await (const c of body) chunks.push(c as Buffer);
      const buf = Buffer.concat(chunks);
      if (buf.length !== length) {
        throw new RestoreError(FailureType.AzureTransient, `${location}: got ${buf.length} of ${length} bytes at ${offset}`, false);
      }
      return buf;
    },
  };
}
