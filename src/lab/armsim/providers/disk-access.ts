/**
 * Disks - Grant Access / Revoke Access and the read SAS they hand out. The SAS URL points at the
 * simulator's own HTTPS listener (in the place of Azure's md-*.blob.storage.azure.net export host), with
 * the query shape Azure's disk SAS has (`sv`, `sr=b`, `si`, `sig`); it serves the disk as a fixed VHD
 * (data plus footer) with GET + Range and HEAD, lists its data ranges with Get Page Ranges
 * (`comp=pagelist`), and is refused once revoked, replaced or expired.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import type http from 'node:http';
import { buildFixedVhdFooter } from '../../../azure/vhd';
import type { Reply, ReqCtx } from '../common';
import { exportedSize } from '../diskstore';
import type { SimContext } from '../context';
import { ArmError, invalidParameter, missingParameter } from '../errors';
import { key, type DiskAccessGrant, type DiskRec } from '../state';
import { objectAt, optNumber, optString, uuid } from '../util';

const COMPUTE = 'Microsoft.Compute';
/** The storage service version Azure's disk SAS URLs carry. */
const SAS_VERSION = '2018-03-28';
/** The blob name Azure gives every disk export. */
const EXPORT_BLOB = 'abcd';
const MAX_DURATION_SECONDS = 60 * 24 * 3600;

/** The disk's grant while it is in force (an expired grant counts as none, as the disk leaves ActiveSAS). */
export function activeGrant(d: DiskRec, now = Date.now()): DiskAccessGrant | undefined {
  return d.access && d.access.expiresAt > now ? d.access : undefined;
}

/** POST .../disks/{name}/beginGetAccess: an operation whose result is `{ accessSAS }`. */
export function grantAccess(sim: SimContext, ctx: ReqCtx, d: DiskRec): Reply {
  const endpoint = sim.diskAccess;
  if (!endpoint) throw new ArmError(500, 'InternalServerError', 'The disk access endpoint of the ARM simulator is not running.');
  const body = objectAt(ctx.body, 'body');
  const access = optString(body.access, 'access');
  if (!access) throw missingParameter('access');
  if (access.toLowerCase() === 'write') {
    throw new ArmError(
      409,
      'OperationNotAllowed',
      `Write access can only be granted to a disk created for upload (createOption Upload); disk '${d.name}' was created with '${d.createOption}'.`,
    );
  }
  if (access.toLowerCase() !== 'read') {
    throw invalidParameter(`The value '${access}' of parameter 'access' is not allowed. Allowed values are 'Read', 'Write'.`, 'access');
  }
  const duration = optNumber(body.durationInSeconds, 'durationInSeconds');
  if (duration === undefined) throw missingParameter('durationInSeconds');
  if (!Number.isInteger(duration) || duration <= 0 || duration > MAX_DURATION_SECONDS) {
    throw invalidParameter(
      `The value ${duration} of parameter 'durationInSeconds' is out of range. The value must be between 1 and ${MAX_DURATION_SECONDS}, inclusive.`,
      'durationInSeconds',
    );
  }
  const vm = d.managedBy ? sim.state.vms[d.managedBy] : undefined;
  if (vm && vm.powerState !== 'deallocated') {
    // Azure answers this one with 409 Conflict (not OperationNotAllowed).
    throw new ArmError(409, 'Conflict', `Access not permitted because disk ${d.name} is currently attached to running VM ${vm.id}.`);
  }
  const grant: DiskAccessGrant = {
    id: uuid(),
    container: randomBytes(6).toString('hex'),
    expiresAt: Date.now() + duration * 1000,
  };
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: d.location,
    kind: 'diskGrantAccess',
    resourceKey: key(d.id),
    action: 'beginGetAccess',
    grant,
    result: { accessSAS: sasUrl(sasBase(endpoint.endpoint, ctx.baseUrl), endpoint.key, d, grant) },
  });
  sim.save();
  return { status: 202, headers: sim.operationHeaders(ctx, op) };
}

/** POST .../disks/{name}/endGetAccess: revokes the SAS (a disk without one stays as it is). */
export function revokeAccess(sim: SimContext, ctx: ReqCtx, d: DiskRec): Reply {
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: d.location,
    kind: 'diskRevokeAccess',
    resourceKey: key(d.id),
    action: 'endGetAccess',
  });
  sim.save();
  return { status: 202, headers: sim.operationHeaders(ctx, op) };
}

/** Completion of a grant or revoke: a new grant replaces any earlier one, whose SAS stops working. */
export function completeAccessOperation(sim: SimContext, op: { kind: string; resourceKey: string; grant?: DiskAccessGrant }): void {
  const d = sim.state.disks[op.resourceKey];
  if (!d) return;
  if (op.kind === 'diskGrantAccess' && op.grant) d.access = op.grant;
  else if (op.kind === 'diskRevokeAccess') delete d.access;
}

function signature(k: Buffer, d: DiskRec, g: DiskAccessGrant): string {
  return createHmac('sha256', k).update(`disk-sas\n${d.uniqueId}\n${g.id}\n${g.container}\n${g.expiresAt}\nr`).digest('base64');
}

/** The listener's port on the host name the client used for ARM (a container's service name, say). */
function sasBase(listener: string, armBaseUrl: string): string {
  const u = new URL(listener);
  try {
    u.hostname = new URL(armBaseUrl).hostname;
  } catch {
    // Keep the listener's own host.
  }
  return u.origin;
}

function sasUrl(base: string, k: Buffer, d: DiskRec, g: DiskAccessGrant): string {
  const q = new URLSearchParams({ sv: SAS_VERSION, sr: 'b', si: g.id, sig: signature(k, d, g) });
  return `${base}/${g.container}/${EXPORT_BLOB}?${q.toString()}`;
}

// ---- the SAS listener ----------------------------------------------------------------------------

function storageError(res: http.ServerResponse, status: number, code: string, message: string, detail?: string): void {
  const when = new Date().toUTCString();
  const xml =
    `<?xml version="1.0" encoding="utf-8"?><Error><Code>${code}</Code><Message>${message}\nRequestId:${uuid()}\nTime:${when}</Message>` +
    (detail ? `<AuthenticationErrorDetail>${detail}</AuthenticationErrorDetail>` : '') +
    '</Error>';
  res.writeHead(status, {
    'Content-Type': 'application/xml',
    'Content-Length': Buffer.byteLength(xml),
    'x-ms-error-code': code,
    'x-ms-version': SAS_VERSION,
  });
  res.end(xml);
}

const AUTH_FAILED =
  'Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.';

/** Parses `bytes=a-b` / `bytes=a-`; undefined for no header, 'bad' for a range outside the blob. */
function parseRange(header: string | undefined, size: number): { start: number; end: number } | undefined | 'bad' {
  if (!header) return undefined;
  const m = /^bytes=(\d+)-(\d*)$/.exec(header.trim());
  if (!m) return undefined;
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return 'bad';
  return { start, end };
}

/** Serves one request on the SAS listener. */
export async function serveDiskAccess(sim: SimContext, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
  const e = sim.diskAccess;
  const url = new URL(req.url ?? '/', 'http://disk-access');
  const [container, blob, ...extra] = url.pathname.split('/').filter((p) => p.length > 0);
  const d =
    container && blob === EXPORT_BLOB && extra.length === 0
      ? Object.values(sim.state.disks).find((x) => x.access?.container === container)
      : undefined;
  if (!e || !d || !d.access) {
    // A SAS whose access was revoked (its signed identifier is gone) fails authentication, as on Azure.
    if (url.searchParams.has('sig')) {
      storageError(res, 403, 'AuthenticationFailed', AUTH_FAILED, 'Signed identifier not found: the access to this disk was revoked.');
    } else {
      storageError(res, 404, 'ResourceNotFound', 'The specified resource does not exist.');
    }
    return;
  }
  const g = d.access;
  const q = url.searchParams;
  const sig = Buffer.from(q.get('sig') ?? '', 'base64');
  const want = Buffer.from(signature(e.key, d, g), 'base64');
  if (q.get('si') !== g.id || sig.length !== want.length || !timingSafeEqual(sig, want)) {
    storageError(res, 403, 'AuthenticationFailed', AUTH_FAILED, 'Signature did not match. String to sign used was r');
    return;
  }
  if (!activeGrant(d)) {
    storageError(res, 403, 'AuthenticationFailed', AUTH_FAILED, 'Signed expiry time has passed: the access to this disk has expired.');
    return;
  }
  const method = (req.method ?? 'GET').toUpperCase();
  if (method !== 'GET' && method !== 'HEAD') {
    storageError(
      res,
      403,
      'AuthorizationPermissionMismatch',
      'This request is not authorized to perform this operation using this permission.',
    );
    return;
  }
  const total = exportedSize(d);
  if (url.searchParams.get('comp') === 'pagelist') {
    await servePageList(sim, d, g, req, res, total);
    return;
  }
  const headers: Record<string, string | number> = {
    'Accept-Ranges': 'bytes',
    'Content-Type': 'application/octet-stream',
    'Last-Modified': new Date(d.timeCreated).toUTCString(),
    ETag: `"0x${Buffer.from(d.uniqueId.replace(/-/g, ''), 'hex').subarray(0, 8).toString('hex').toUpperCase()}"`,
    'x-ms-blob-type': 'PageBlob',
    'x-ms-version': SAS_VERSION,
  };
  const rawRange = (req.headers['x-ms-range'] as string | undefined) ?? req.headers.range;
  const range = parseRange(rawRange, total);
  if (range === 'bad') {
    storageError(res, 416, 'InvalidRange', 'The range specified is invalid for the current size of the resource.');
    return;
  }
  const { start, end } = range ?? { start: 0, end: total - 1 };
  headers['Content-Length'] = end - start + 1;
  if (range) headers['Content-Range'] = `bytes ${start}-${end}/${total}`;
  res.writeHead(range ? 206 : 200, headers);
  if (method === 'HEAD') {
    res.end();
    return;
  }
  await sendDiskRange(sim, d, start, end, res);
}

/** The bytes [start, end] of the disk as a VHD: its stored data, then the footer. */
async function sendDiskRange(sim: SimContext, d: DiskRec, start: number, end: number, res: http.ServerResponse): Promise<void> {
  const dataSize = d.diskSizeBytes;
  if (start < dataSize) {
    // 1 MiB reads: the default 64 KiB makes a 2 GiB disk 32,768 reads and as many TLS records.
    const stream = fs.createReadStream(sim.disks.pathOf(d), { start, end: Math.min(end, dataSize - 1), highWaterMark: 1024 * 1024 });
    await new Promise<void>((resolve, reject) => {
      stream.on('error', reject);
      stream.on('end', resolve);
      stream.pipe(res, { end: false });
    });
  }
  if (end >= dataSize) {
    const footer = buildFixedVhdFooter({
      currentSize: dataSize,
      uuid: Buffer.from(d.uniqueId.replace(/-/g, ''), 'hex'),
      timestamp: new Date(d.timeCreated),
    });
    res.end(footer.subarray(Math.max(0, start - dataSize), end - dataSize + 1));
  } else {
    res.end();
  }
}

/** Granularity of the page ranges a disk export lists here: whole 64 KiB blocks that hold a non-zero byte. */
const PAGE_LIST_BLOCK = 64 * 1024;
const SCAN_READ = 4 * 1024 * 1024;
/** Each grant's data ranges, found once: a disk cannot be written while it is exported. */
const rangesByGrant = new Map<string, Promise<Array<{ start: number; end: number }>>>();

/** The blocks of `file` that hold a non-zero byte, merged into ranges with inclusive ends. */
async function scanDataRanges(file: string, size: number): Promise<Array<{ start: number; end: number }>> {
  const out: Array<{ start: number; end: number }> = [];
  const fh = await fs.promises.open(file, 'r');
  try {
    const buf = Buffer.alloc(SCAN_READ);
    const zero = Buffer.alloc(PAGE_LIST_BLOCK);
    for (let at = 0; at < size; at += SCAN_READ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(SCAN_READ, size - at), at);
      for (let b = 0; b < bytesRead; b += PAGE_LIST_BLOCK) {
        const n = Math.min(PAGE_LIST_BLOCK, bytesRead - b);
        if (buf.subarray(b, b + n).equals(zero.subarray(0, n))) continue;
        const last = out.at(-1);
        if (last && last.end + 1 === at + b) last.end = at + b + n - 1;
        else out.push({ start: at + b, end: at + b + n - 1 });
      }
    }
  } finally {
    await fh.close();
  }
  return out;
}

/** The disk's data ranges, from its stored bytes: what Azure lists as the pages written. Found once per grant. */
function dataRanges(sim: SimContext, d: DiskRec, g: DiskAccessGrant): Promise<Array<{ start: number; end: number }>> {
  const active = new Set(Object.values(sim.state.disks).map((x) => x.access?.id));
  for (const id of rangesByGrant.keys()) if (!active.has(id)) rangesByGrant.delete(id);
  let found = rangesByGrant.get(g.id);
  if (!found) {
    found = scanDataRanges(sim.disks.pathOf(d), d.diskSizeBytes);
    rangesByGrant.set(g.id, found);
    found.catch(() => rangesByGrant.delete(g.id));
  }
  return found;
}

/** Get Page Ranges on the export: the data ranges within `x-ms-range` (the whole VHD without one); the footer is a page too. */
async function servePageList(
  sim: SimContext,
  d: DiskRec,
  g: DiskAccessGrant,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  total: number,
): Promise<void> {
  if ((req.method ?? 'GET').toUpperCase() !== 'GET') {
    storageError(res, 400, 'UnsupportedHttpVerb', "The resource doesn't support the specified HTTP verb.");
    return;
  }
  const raw = (req.headers['x-ms-range'] as string | undefined) ?? req.headers.range;
  const range = parseRange(raw, total);
  if (range === 'bad' || (range && (range.start % 512 !== 0 || (range.end + 1) % 512 !== 0))) {
    storageError(res, 416, 'InvalidRange', 'The range specified is invalid for the current size of the resource.');
    return;
  }
  const { start, end } = range ?? { start: 0, end: total - 1 };
  const ranges = [...(await dataRanges(sim, d, g)), { start: d.diskSizeBytes, end: total - 1 }]
    .map((r) => ({ start: Math.max(r.start, start), end: Math.min(r.end, end) }))
    .filter((r) => r.start <= r.end);
  const body =
    '<?xml version="1.0" encoding="utf-8"?><PageList>' +
    ranges.map((r) => `<PageRange><Start>${r.start}</Start><End>${r.end}</End></PageRange>`).join('') +
    '</PageList>';
  res.writeHead(200, {
    'Content-Type': 'application/xml',
    'Content-Length': Buffer.byteLength(body),
    'x-ms-blob-content-length': total,
    'x-ms-version': SAS_VERSION,
  });
  res.end(body);
}
