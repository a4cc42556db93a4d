/** The simulator's HTTP plumbing: listening, bodies, replies, bearer tokens. */
import http from 'node:http';
import type net from 'node:net';
import { randomUUID } from 'node:crypto';
import type { Reply } from './common';
import { ArmError } from './errors';
import { TokenIssuer } from './identity';

const MAX_BODY = 8 * 1024 * 1024;

/** Whether a peer address is this machine's loopback (IPv4 127/8, ::1, or IPv4-mapped 127/8). */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const a = address.toLowerCase();
  return a === '::1' || /^(::ffff:)?127\./.test(a);
}

/** Starts `server` listening, keeping its sockets in `sockets` so close() can end them; resolves to the port. */
export async function listenTracked(server: http.Server, port: number, host: string, sockets: Set<net.Socket>): Promise<number> {
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

/** Checks the bearer token; returns the client id when it is one the identity endpoint issued. */
export function checkAuth(req: http.IncomingMessage, issuer: TokenIssuer, onlyIssued: boolean): string | undefined {
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

export function readBody(req: http.IncomingMessage): Promise<Buffer> {
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

export function send(res: http.ServerResponse, reply: Reply, req?: http.IncomingMessage): void {
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

export function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}
