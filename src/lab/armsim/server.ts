import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { ensureDiskStores } from './providers/disks';
import { serveDiskAccess } from './providers/disk-access';
import { DiskStore } from './diskstore';
import type { QuotaLimits, RunCommandResponseRule, SimSettings } from './context';
import { ArmSim } from './engine';
import type { Reply, ReqCtx } from './common';
import { ArmError } from './errors';
import { type ActiveFault, FaultBook, type FaultRule } from './faults';
import { applySeed, bindStorageAccounts } from './seed';
import { findVmSize } from './sizes';
import { StateStore } from './state';
import { ensureLabCertificate } from './tls';
import { TokenIssuer } from './identity';
import { isObject } from './util';
import { checkAuth, headerValue, isLoopback, listenTracked, readBody, send } from './http';
import { adminTokenFromState, signingKey } from './secrets';
import type { ArmSimulator, ArmSimulatorOptions, RequestLogEntry } from './simulator-types';

export type { ArmSimulator, ArmSimulatorOptions, RequestLogEntry } from './simulator-types';

const DEFAULT_QUOTAS: QuotaLimits = { regionalVCpus: 350, families: {}, defaultFamilyVCpus: 350 };

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
