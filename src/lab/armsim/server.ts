import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import path from 'node:path';
import { ensureDiskStores } from './providers/disks';
import { serveDiskAccess } from './providers/disk-access';
import { DiskStore } from './diskstore';
import type { QuotaLimits, RunCommandHandler, RunCommandResponseRule, SimSettings } from './context';
import { ArmSim } from './engine';
import type { Reply, ReqCtx } from './common';
import { ArmError } from './errors';
import { FaultBook, type ActiveFault, type FaultRule } from './faults';
import { applySeed, bindStorageAccounts, type BlobBackend, type SeedOptions } from './seed';
import { findVmSize } from './sizes';
import { StateStore, type SimState } from './state';
import { ensureLabCertificate } from './tls';
import { TokenIssuer, type ServicePrincipal } from './identity';
import { isObject } from './util';

export interface ArmSimulatorOptions {
  /** Holds armsim-state.json and the lab CA/server certificate. */
  stateDir: string;
  /** 0 (default) picks a free port. */
  port?: number;
  host?: string;
  /** HTTPS with the lab CA (default). With false, clients need allowInsecureConnection and no bearer policy. */
  tls?: boolean;
  subscriptionId: string;
  blob: BlobBackend;
  /** Status polls until an operation completes (default 1: the first poll reports Succeeded; 0: done at once). */
  lroPolls?: number;
  /** Wall-clock bound after which running operations complete without polls (default 10 s). */
  lroMaxMs?: number;
  /** Retry-After seconds on operation and throttling replies (default 0). */
  retryAfterSeconds?: number;
  /** Require a Bearer Authorization header as ARM does (default: true with TLS, false without). */
  requireAuth?: boolean;
  /**
   * App registrations the built-in identity endpoint signs in (client credentials). Tokens it issues are
   * checked on every ARM request (signature, expiry); other bearer tokens pass unless `onlyIssuedTokens`.
   */
  principals?: ServicePrincipal[];
  /** Accept only tokens from the identity endpoint, as ARM accepts only Entra ID tokens. */
  onlyIssuedTokens?: boolean;
  /** Extra host names for the server certificate (say a container's service name). */
  certHosts?: string[];
  quotas?: Partial<QuotaLimits>;
  seed?: SeedOptions;
  /** Produces run-command output in-process; admin-configured canned responses take precedence. */
  runCommand?: RunCommandHandler;
  /** Request-log entries kept in memory (default 50000). */
  logLimit?: number;
  /**
   * Token the admin endpoints (`/_admin/...`) require in the `X-Admin-Token` header. Absent: the one in
   * `<stateDir>/admin-token`, created (mode 0600) on first start. Admin requests must also come from a
   * loopback address, whatever address the ARM endpoints listen on.
   */
  adminToken?: string;
  /**
   * Where running VMs' disks appear as devices, as an Azure Linux VM sees them under /dev/disk/azure:
   * `<deviceRoot>/<vmName>/scsi1/lun<N>` (data disks) and `<deviceRoot>/<vmName>/root` (OS disk), symlinks
   * to the disks' stores. Undefined: no device paths.
   */
  deviceRoot?: string;
  /** Port of the listener that serves disks' read SAS URLs (default 0: a free one). */
  diskAccessPort?: number;
}

export interface RequestLogEntry {
  seq: number;
  time: string;
  method: string;
  path: string;
  query: string;
  status: number;
  durationMs: number;
  /** ARM error code of an error reply. */
  code?: string;
  /** Kind of the fault rule that shaped this reply, if any. */
  fault?: string;
  faultId?: string;
  /** Client id of the app registration whose issued token authorised the request. */
  principal?: string;
}

export interface ArmSimulator {
  /** Base URL for the SDK clients' `endpoint` option, e.g. https://127.0.0.1:40123 */
  endpoint: string;
  /** PEM of the lab CA (undefined in plain-http mode). */
  caCertPath?: string;
  port: number;
  /** Base URL of the listener serving read SAS URLs of disks (same CA as `endpoint`). */
  diskAccessEndpoint: string;
  /** The file holding a managed disk's bytes (its data, without a VHD footer), by disk id. */
  diskStorePath(diskId: string): string | undefined;
  stateFile: string;
  /** What `X-Admin-Token` must say on `/_admin/...` requests, and the file holding it. */
  adminToken: string;
  adminTokenFile?: string;
  close(): Promise<void>;
  setFaults(rules: FaultRule[], append?: boolean): ActiveFault[];
  clearFaults(): void;
  requestLog(): RequestLogEntry[];
  clearRequestLog(): void;
  state(): SimState;
}

const DEFAULT_QUOTAS: QuotaLimits = { regionalVCpus: 350, families: {}, defaultFamilyVCpus: 350 };
const MAX_BODY = 8 * 1024 * 1024;

export async function startArmSimulator(opts: ArmSimulatorOptions): Promise<ArmSimulator> {
  const useTls = opts.tls ?? true;
  const host = opts.host ?? '127.0.0.1';
  const store = new StateStore(opts.stateDir, opts.subscriptionId);
  const settings: SimSettings = {
    subscriptionId: store.state.subscriptionId,
    lroPolls: opts.lroPolls ?? 1,
    lroMaxMs: opts.lroMaxMs ?? 10_000,
    retryAfterSeconds: opts.retryAfterSeconds ?? 0,
    quotas: { ...DEFAULT_QUOTAS, ...opts.quotas, families: { ...DEFAULT_QUOTAS.families, ...opts.quotas?.families } },
    runCommand: opts.runCommand,
  };
  const sim = new ArmSim(store, settings, new DiskStore(opts.stateDir, opts.deviceRoot));
  bindStorageAccounts(sim, opts.blob);
  if (opts.seed) applySeed(sim, opts.seed, opts.blob);
  store.save();
  // Disks from an older state get their stores before any request runs, without holding up the start.
  void sim
    .exclusive(() => ensureDiskStores(sim))
    .catch((err: unknown) => {
      process.stderr.write(`armsim: preparing disk stores: ${(err as Error).stack ?? String(err)}\n`);
    });

  const faults = new FaultBook();
  const log: RequestLogEntry[] = [];
  const logLimit = opts.logLimit ?? 50_000;
  let seq = 0;
  const requireAuth = opts.requireAuth ?? useTls;
  const issuer = new TokenIssuer(opts.principals ?? [], signingKey(opts.stateDir));
  const admin = opts.adminToken === undefined ? adminTokenFromState(opts.stateDir) : { token: opts.adminToken, file: undefined };
  if (admin.token.length < 16) throw new Error('adminToken must be at least 16 characters');
  const adminDigest = createHash('sha256').update(admin.token).digest();

  const sockets = new Set<net.Socket>();
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    void handle(req, res).catch((err: unknown) => {
      process.stderr.write(`armsim: unhandled error: ${(err as Error).stack ?? String(err)}\n`);
      if (!res.headersSent) send(res, { status: 500, body: { error: { code: 'InternalServerError', message: String(err) } } });
    });
  };

  let cert: ReturnType<typeof ensureLabCertificate> | undefined;
  let server: http.Server | https.Server;
  if (useTls) {
    cert = ensureLabCertificate(opts.stateDir, [...(host === '0.0.0.0' || host === '::' ? [] : [host]), ...(opts.certHosts ?? [])]);
    server = https.createServer({ key: fs.readFileSync(cert.keyPath), cert: fs.readFileSync(cert.certPath) }, handler);
  } else {
    server = http.createServer(handler);
  }
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as net.AddressInfo).port;
  const publicHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  const scheme = useTls ? 'https' : 'http';
  const endpoint = `${scheme}://${publicHost}:${port}`;

  // Read SAS URLs of disks are served on a listener of their own, as Azure serves them from a storage host.
  const diskHandler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    void serveDiskAccess(sim, req, res).catch((err: unknown) => {
      process.stderr.write(`armsim: disk access: ${(err as Error).stack ?? String(err)}\n`);
      if (!res.headersSent) res.writeHead(500);
      res.destroy();
    });
  };
  const diskServer =
    useTls && cert
      ? https.createServer({ key: fs.readFileSync(cert.keyPath), cert: fs.readFileSync(cert.certPath) }, diskHandler)
      : http.createServer(diskHandler);
  const diskAccessEndpoint = `${scheme}://${publicHost}:${await listenTracked(diskServer, opts.diskAccessPort ?? 0, host, sockets)}`;
  sim.diskAccess = {
    endpoint: diskAccessEndpoint,
    key: createHash('sha256').update('disk-sas').update(signingKey(opts.stateDir)).digest(),
  };

  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const started = Date.now();
    const method = (req.method ?? 'GET').toUpperCase();
    const url = new URL(req.url ?? '/', endpoint);
    const raw = await readBody(req);
    if (url.pathname.startsWith('/_admin/') || url.pathname === '/_admin') {
      send(res, adminGate(req) ?? adminRoute(method, url, raw));
      return;
    }
    const identityReply = issuer.handle(method, url, raw, endpoint);
    if (identityReply) {
      send(res, identityReply);
      return;
    }
    const entry: RequestLogEntry = {
      seq: ++seq,
      time: new Date(started).toISOString(),
      method,
      path: url.pathname,
      query: url.search,
      status: 0,
      durationMs: 0,
    };
    const finish = (reply: Reply | undefined, code?: string): void => {
      entry.status = reply?.status ?? 0;
      entry.durationMs = Date.now() - started;
      if (code) entry.code = code;
      log.push(entry);
      if (log.length > logLimit) log.splice(0, log.length - logLimit);
      if (reply) send(res, reply, req);
    };

    const { delayMs, rule } = faults.match(method, url.pathname);
    if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
    let lroFailure: ReqCtx['lroFailure'];
    if (rule) {
      entry.fault = rule.kind;
      entry.faultId = rule.id;
      if (rule.kind === 'disconnect') {
        finish(undefined);
        req.socket.destroy();
        return;
      }
      if (rule.kind === 'lroFailure') {
        lroFailure = {
          status: rule.status ?? 500,
          code: rule.code ?? 'AllocationFailed',
          message:
            rule.message ??
            'Allocation failed. We do not have sufficient capacity for the requested VM size in this region. Read more about improving likelihood of allocation success at http://aka.ms/allocation-guidance',
        };
      } else {
        const err = faultError(rule, method, url.pathname, raw);
        finish({ status: err.status, body: err.body(), headers: err.extra.headers }, err.code);
        return;
      }
    }

    try {
      if (requireAuth) {
        const principal = checkAuth(req, issuer, opts.onlyIssuedTokens ?? false);
        if (principal) entry.principal = principal;
      }
      const apiVersion = url.searchParams.get('api-version');
      if (!apiVersion) {
        throw new ArmError(
          400,
          'MissingApiVersionParameter',
          'The api-version query parameter (?api-version=) is required for all requests.',
        );
      }
      let body: unknown;
      if (raw.length > 0) {
        try {
          body = JSON.parse(raw.toString('utf8'));
        } catch (err) {
          throw new ArmError(
            400,
            'InvalidRequestContent',
            `The request content was invalid and could not be deserialized: '${(err as Error).message}'.`,
          );
        }
      }
      const ctx: ReqCtx = {
        method,
        path: url.pathname,
        segments: url.pathname
          .split('/')
          .filter((p) => p.length > 0)
          .map((p) => decodeURIComponent(p)),
        query: url.searchParams,
        body,
        baseUrl: `${scheme}://${req.headers.host ?? `${publicHost}:${port}`}`,
        apiVersion,
        lroFailure,
        ifMatch: headerValue(req.headers['if-match']),
        ifNoneMatch: headerValue(req.headers['if-none-match']),
      };
      const reply = await sim.handle(ctx);
      finish(reply);
    } catch (err) {
      if (err instanceof ArmError) {
        finish({ status: err.status, body: err.body(), headers: err.extra.headers }, err.code);
        return;
      }
      process.stderr.write(`armsim: ${method} ${url.pathname}: ${(err as Error).stack ?? String(err)}\n`);
      finish(
        {
          status: 500,
          body: { error: { code: 'InternalServerError', message: `Encountered internal server error: ${(err as Error).message}` } },
        },
        'InternalServerError',
      );
    }
  }

  function faultError(rule: ActiveFault, method: string, path: string, raw: Buffer): ArmError {
    const retryAfter = String(rule.retryAfterSeconds ?? settings.retryAfterSeconds);
    switch (rule.kind) {
      case 'throttle': {
        const kind = method === 'GET' ? 'read' : method === 'DELETE' ? 'delete' : 'write';
        return new ArmError(
          rule.status ?? 429,
          rule.code ?? 'SubscriptionRequestsThrottled',
          rule.message ??
            `Number of '${kind}' requests for subscription '${settings.subscriptionId}' actor '${randomUUID()}' exceeded. Please try again after '${retryAfter}' seconds after additional '${retryAfter}' requests. Please see https://aka.ms/throttling for more information.`,
          {
            headers: {
              'Retry-After': retryAfter,
              [`x-ms-ratelimit-remaining-subscription-${kind === 'read' ? 'reads' : kind === 'delete' ? 'deletes' : 'writes'}`]: '0',
            },
          },
        );
      }
      case 'transient': {
        const status = rule.status ?? 503;
        const headers: Record<string, string> = {};
        if (status === 503 || rule.retryAfterSeconds !== undefined) headers['Retry-After'] = retryAfter;
        if (status === 503) {
          return new ArmError(
            status,
            rule.code ?? 'ServiceUnavailable',
            rule.message ?? 'The service is temporarily unavailable. Please retry the request later.',
            { headers },
          );
        }
        return new ArmError(
          status,
          rule.code ?? 'InternalServerError',
          rule.message ??
            `Encountered internal server error. Diagnostic information: timestamp '${new Date().toISOString()}', subscription id '${settings.subscriptionId}', tracking id '${randomUUID()}', request correlation id '${randomUUID()}'.`,
          { headers },
        );
      }
      case 'quota': {
        let vmSize: string | undefined;
        let location = 'unknown';
        try {
          const body = JSON.parse(raw.toString('utf8')) as { location?: string; properties?: { hardwareProfile?: { vmSize?: string } } };
          vmSize = body.properties?.hardwareProfile?.vmSize;
          location = body.location ?? location;
        } catch {
          // Not a VM body: report the regional quota.
        }
        const size = vmSize ? findVmSize(vmSize) : undefined;
        const usage = sim.coreUsage(location);
        const used = size ? (usage.families[size.family] ?? 0) : usage.total;
        const err = sim.quotaError(size?.family, size?.familyDisplay ?? 'Total Regional vCPUs', location, used, used, size?.vCPUs ?? 1);
        return new ArmError(rule.status ?? err.status, rule.code ?? err.code, rule.message ?? err.message, err.extra);
      }
      default:
        return new ArmError(
          rule.status ?? 400,
          rule.code ?? 'BadRequest',
          rule.message ?? `Injected fault ${rule.id} on ${method} ${path}.`,
        );
    }
  }

  /** Admin requests come from this machine and carry the admin token; anything else is refused. */
  function adminGate(req: http.IncomingMessage): Reply | undefined {
    if (!isLoopback(req.socket.remoteAddress)) {
      return {
        status: 403,
        body: {
          error: { code: 'AdminForbidden', message: `admin endpoints answer only on loopback, not to ${req.socket.remoteAddress ?? '?'}` },
        },
      };
    }
    const given = headerValue(req.headers['x-admin-token']);
    if (given === undefined || !timingSafeEqual(createHash('sha256').update(given).digest(), adminDigest)) {
      return { status: 401, body: { error: { code: 'AdminUnauthorized', message: 'admin endpoints need the X-Admin-Token header' } } };
    }
    return undefined;
  }

  function adminRoute(method: string, url: URL, raw: Buffer): Reply {
    const route = `${method} ${url.pathname.replace(/\/+$/, '')}`;
    let body: unknown;
    try {
      body = raw.length ? JSON.parse(raw.toString('utf8')) : {};
    } catch (err) {
      return { status: 400, body: { error: { code: 'InvalidRequestContent', message: (err as Error).message } } };
    }
    const b = isObject(body) ? body : {};
    try {
      switch (route) {
        case 'GET /_admin/health':
          return { status: 200, body: { ok: true, endpoint, subscriptionId: settings.subscriptionId, tls: useTls } };
        case 'GET /_admin/state':
          return { status: 200, body: store.state };
        case 'GET /_admin/log': {
          const since = Number(url.searchParams.get('since') ?? 0);
          const m = url.searchParams.get('method')?.toUpperCase();
          const p = url.searchParams.get('path');
          const re = p ? new RegExp(p, 'i') : undefined;
          const entries = log.filter((e) => e.seq > since && (!m || e.method === m) && (!re || re.test(e.path)));
          return { status: 200, body: { entries, lastSeq: seq } };
        }
        case 'DELETE /_admin/log':
          log.length = 0;
          return { status: 200, body: { lastSeq: seq } };
        case 'GET /_admin/faults':
          return { status: 200, body: { rules: faults.list() } };
        case 'POST /_admin/faults': {
          const rules = Array.isArray(b.rules) ? (b.rules as FaultRule[]) : undefined;
          if (!rules) return { status: 400, body: { error: { code: 'BadRequest', message: 'body must be { rules: [...] }' } } };
          return { status: 200, body: { rules: faults.set(rules, b.append === true) } };
        }
        case 'DELETE /_admin/faults':
          faults.clear();
          return { status: 200, body: { rules: [] } };
        case 'GET /_admin/runCommands':
          return { status: 200, body: { runCommands: store.state.runCommands } };
        case 'POST /_admin/runCommandResponses': {
          const rules = Array.isArray(b.rules) ? (b.rules as RunCommandResponseRule[]) : undefined;
          if (!rules) return { status: 400, body: { error: { code: 'BadRequest', message: 'body must be { rules: [...] }' } } };
          for (const r of rules) if (r.match !== undefined) new RegExp(r.match);
          const parsed = rules.map((r) => ({ ...r, used: 0 }));
          sim.runCommandRules = b.append === true ? [...sim.runCommandRules, ...parsed] : parsed;
          return { status: 200, body: { rules: sim.runCommandRules } };
        }
        case 'DELETE /_admin/runCommandResponses':
          sim.runCommandRules = [];
          return { status: 200, body: { rules: [] } };
        case 'GET /_admin/config':
          return { status: 200, body: publicSettings() };
        case 'POST /_admin/config': {
          if (typeof b.lroPolls === 'number') settings.lroPolls = b.lroPolls;
          if (typeof b.lroMaxMs === 'number') settings.lroMaxMs = b.lroMaxMs;
          if (typeof b.retryAfterSeconds === 'number') settings.retryAfterSeconds = b.retryAfterSeconds;
          if (isObject(b.quotas)) {
            const q = b.quotas as Partial<QuotaLimits>;
            if (typeof q.regionalVCpus === 'number') settings.quotas.regionalVCpus = q.regionalVCpus;
            if (typeof q.defaultFamilyVCpus === 'number') settings.quotas.defaultFamilyVCpus = q.defaultFamilyVCpus;
            if (isObject(q.families)) Object.assign(settings.quotas.families, q.families);
          }
          return { status: 200, body: publicSettings() };
        }
        default:
          return { status: 404, body: { error: { code: 'NotFound', message: `no admin route ${route}` } } };
      }
    } catch (err) {
      return { status: 400, body: { error: { code: 'BadRequest', message: (err as Error).message } } };
    }
  }

  function publicSettings(): unknown {
    return {
      lroPolls: settings.lroPolls,
      lroMaxMs: settings.lroMaxMs,
      retryAfterSeconds: settings.retryAfterSeconds,
      quotas: settings.quotas,
    };
  }

  let closed = false;
  return {
    endpoint,
    caCertPath: cert?.caCertPath,
    port,
    diskAccessEndpoint,
    diskStorePath: (diskId) => {
      const d = store.state.disks[diskId.toLowerCase()];
      return d ? sim.disks.pathOf(d) : undefined;
    },
    stateFile: store.file,
    adminToken: admin.token,
    adminTokenFile: admin.file,
    async close() {
      if (closed) return;
      closed = true;
      const closing = [server, diskServer].map((srv) => new Promise<void>((resolve) => srv.close(() => resolve())));
      for (const s of sockets) s.destroy();
      await Promise.all(closing);
      store.save();
    },
    setFaults: (rules, append) => faults.set(rules, append),
    clearFaults: () => faults.clear(),
    requestLog: () => [...log],
    clearRequestLog: () => {
      log.length = 0;
    },
    state: () => store.state,
  };
}

/** The admin token kept with the simulator's state, created on first start. */
function adminTokenFromState(stateDir: string): { token: string; file: string } {
  const file = path.join(stateDir, 'admin-token');
  try {
    return { token: fs.readFileSync(file, 'utf8').trim(), file };
  } catch {
    fs.mkdirSync(stateDir, { recursive: true });
    const token = randomBytes(24).toString('base64url');
    fs.writeFileSync(file, token, { mode: 0o600 });
    return { token, file };
  }
}

/** Whether a peer address is this machine's loopback (IPv4 127/8, ::1, or IPv4-mapped 127/8). */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.toLowerCase();
  return a === '::1' || /^(::ffff:)?127\./.test(a);
}

/** Starts `server` listening, keeping its sockets in `sockets` so close() can end them; resolves to the port. */
async function listenTracked(server: http.Server, port: number, host: string, sockets: Set<net.Socket>): Promise<number> {
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return (server.address() as net.AddressInfo).port;
}

/** The HMAC key for issued tokens, kept with the simulator's state so tokens survive a restart. */
function signingKey(stateDir: string): Buffer {
  const file = path.join(stateDir, 'token-signing.key');
  try {
    return fs.readFileSync(file);
  } catch {
    fs.mkdirSync(stateDir, { recursive: true });
    const key = randomBytes(32);
    fs.writeFileSync(file, key, { mode: 0o600 });
    return key;
  }
}

/** Checks the bearer token; returns the client id when it is one the identity endpoint issued. */
function checkAuth(req: http.IncomingMessage, issuer: TokenIssuer, onlyIssued: boolean): string | undefined {
  const auth = req.headers.authorization;
  if (!auth) {
    throw new ArmError(401, 'AuthenticationFailed', "Authentication failed. The 'Authorization' header is missing.", {
      headers: {
        'WWW-Authenticate':
          'Bearer authorization_uri="https://login.microsoftonline.com/common", error="invalid_token", error_description="The authentication failed because of missing \'Authorization\' header."',
      },
    });
  }
  const m = /^Bearer\s+(\S+)/i.exec(auth);
  if (!m) throw new ArmError(401, 'InvalidAuthenticationToken', 'The access token is invalid.');
  const verdict = issuer.check(m[1]);
  if (verdict.status === 'valid') return verdict.clientId;
  if (verdict.status === 'expired') {
    throw new ArmError(401, 'ExpiredAuthenticationToken', 'The access token expiry UTC time is earlier than current UTC time.');
  }
  if (verdict.status === 'unknown' || onlyIssued) throw new ArmError(401, 'InvalidAuthenticationToken', 'The access token is invalid.');
  return undefined;
}

function readBody(req: http.IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function send(res: http.ServerResponse, reply: Reply, req?: http.IncomingMessage): void {
  const headers: Record<string, string> = {
    'Cache-Control': 'no-cache',
    Pragma: 'no-cache',
    'x-ms-request-id': randomUUID(),
    'x-ms-correlation-request-id': headerValue(req?.headers['x-ms-correlation-request-id']) ?? randomUUID(),
    ...reply.headers,
  };
  const clientRequestId = headerValue(req?.headers['x-ms-client-request-id']);
  if (clientRequestId) headers['x-ms-client-request-id'] = clientRequestId;
  let payload: Buffer | undefined;
  if (reply.body !== undefined) {
    payload = Buffer.from(JSON.stringify(reply.body));
    headers['Content-Type'] = 'application/json; charset=utf-8';
  }
  headers['Content-Length'] = String(payload?.length ?? 0);
  res.writeHead(reply.status, headers);
  res.end(payload);
}

function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
