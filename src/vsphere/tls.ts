import * as http from 'node:http';
import * as https from 'node:https';
import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { FailureType, RestoreError } from '../domain/errors';

/** How to trust the server's certificate: CA verification (default), `insecure`, or a pinned thumbprint. */
export interface TlsOptions {
  /** Accept any certificate. For labs only. */
  insecure?: boolean;
  /**
   * SHA-1 (as `govc about.cert -thumbprint` prints) or SHA-256 fingerprint of the server's leaf
   * certificate, hex with or without colons. When set, only a certificate with this fingerprint is
   * accepted, whoever signed it.
   */
  thumbprint?: string;
}

/** Error codes for certificate problems; retrying will not fix them. */
export const TLS_TRUST_ERROR_CODES = new Set([
  'ERR_TLS_THUMBPRINT_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
]);

interface Pin {
  algorithm: 'sha1' | 'sha256';
  hex: string;
}

export function parseThumbprint(thumbprint: string): Pin {
  const hex = thumbprint.replace(/[\s:]/g, '').toUpperCase();
  if (/^[0-9A-F]{40}$/.test(hex)) return { algorithm: 'sha1', hex };
  if (/^[0-9A-F]{64}$/.test(hex)) return { algorithm: 'sha256', hex };
  throw new RestoreError(
    FailureType.InvalidRequest,
    `thumbprint '${thumbprint}' is neither a SHA-1 (40 hex digits) nor a SHA-256 (64 hex digits) fingerprint`,
  );
}

function fingerprintOf(cert: tls.PeerCertificate, algorithm: Pin['algorithm']): string {
  const fp = algorithm === 'sha1' ? cert.fingerprint : cert.fingerprint256;
  return (fp ?? '').replace(/:/g, '').toUpperCase();
}

/**
 * Node only calls checkServerIdentity when the chain already verified, which a self-signed ESXi or
 * vcsim certificate never does. So the pin is checked after the handshake and before the socket is
 * handed to the request, so no request bytes (password, cookie) reach a server that fails it.
 */
class PinnedHttpsAgent extends https.Agent {
  constructor(
    private readonly pin: Pin,
    options: https.AgentOptions,
  ) {
    super({ ...options, rejectUnauthorized: false });
  }

  override createConnection(options: http.ClientRequestArgs, callback?: (err: Error | null, stream: Duplex) => void): Duplex {
    const socket = tls.connect({ ...(options as tls.ConnectionOptions), rejectUnauthorized: false });
    const done = (err: Error | null): void => {
      socket.off('error', onError);
      if (err) socket.destroy();
      callback?.(err, socket);
    };
    const onError = (err: Error): void => done(err);
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      const actual = fingerprintOf(socket.getPeerCertificate(), this.pin.algorithm);
      if (actual === this.pin.hex) return done(null);
      const err = Object.assign(
        new Error(
          `TLS certificate of ${options.host ?? options.hostname}:${options.port} has ${this.pin.algorithm.toUpperCase()} ` +
            `thumbprint ${colonHex(actual)}, expected ${colonHex(this.pin.hex)}`,
        ),
        { code: 'ERR_TLS_THUMBPRINT_MISMATCH' },
      );
      done(err);
    });
    // Returning nothing makes the agent wait for the callback.
    return undefined as unknown as Duplex;
  }
}

function colonHex(hex: string): string {
  return hex.replace(/(..)(?!$)/g, '$1:');
}

/** One keep-alive agent per client, shared by SOAP calls and datastore file transfers. */
export function createAgent(url: URL, options: TlsOptions): http.Agent {
  const common = { keepAlive: true, maxSockets: 16 };
  if (url.protocol === 'http:') return new http.Agent(common);
  if (options.thumbprint) return new PinnedHttpsAgent(parseThumbprint(options.thumbprint), common);
  return new https.Agent({ ...common, rejectUnauthorized: !options.insecure });
}

/** The server's leaf certificate fingerprint, colon-separated, for pinning (like `govc about.cert -thumbprint`). */
export async function serverThumbprint(url: string | URL, algorithm: 'sha1' | 'sha256' = 'sha256'): Promise<string> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: u.hostname,
      port: Number(u.port || 443),
      servername: net.isIP(u.hostname) ? undefined : u.hostname,
      rejectUnauthorized: false,
    });
    socket.once('error', reject);
    socket.once('secureConnect', () => {
      const fp = fingerprintOf(socket.getPeerCertificate(), algorithm);
      socket.end();
      resolve(colonHex(fp));
    });
  });
}
