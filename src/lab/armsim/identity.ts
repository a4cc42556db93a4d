import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** An app registration the simulated Microsoft Entra ID knows: client-credentials sign-in with a secret. */
export interface ServicePrincipal {
  tenantId: string;
  clientId: string;
  clientSecret: string;
}

interface TokenClaims {
  tid: string;
  cid: string;
  /** Expiry, epoch milliseconds. */
  exp: number;
}

export interface IdentityReply {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

const ARM_SCOPES = ['https://management.azure.com/.default', 'https://management.core.windows.net/.default'];
/** Prefix of the access tokens this issuer hands out; other bearer tokens are not ours to judge. */
export const ISSUED_TOKEN_PREFIX = 'armsim-at.';

function aadError(status: number, error: string, code: number, description: string): IdentityReply {
  const traceId = randomBytes(16).toString('hex');
  return {
    status,
    body: {
      error,
      error_description: `AADSTS${code}: ${description} Trace ID: ${traceId} Timestamp: ${new Date().toISOString()}`,
      error_codes: [code],
      timestamp: new Date().toISOString(),
      trace_id: traceId,
      correlation_id: traceId,
    },
  };
}

function secretMatches(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * The slice of the Microsoft identity platform (v2.0 endpoints) that a confidential client needs: the
 * tenant's OpenID configuration and the token endpoint's client-credentials grant, with AADSTS errors in
 * the platform's shape. MSAL (through @azure/identity) signs in against it as against
 * login.microsoftonline.com when pointed at it with authorityHost and instance discovery off.
 */
export class TokenIssuer {
  /**
   * Tokens are signed with `signingKey` rather than remembered, so they stay valid across a restart of the
   * simulator (keep the key with its state) exactly until they expire.
   */
  constructor(
    private readonly principals: ServicePrincipal[],
    private readonly signingKey: Buffer,
    private readonly lifetimeSeconds = 3600,
  ) {}

  private sign(payload: string): string {
    return createHmac('sha256', this.signingKey).update(payload).digest('base64url');
  }

  /** Answers identity-platform requests; undefined for any other path. */
  handle(method: string, url: URL, raw: Buffer, endpoint: string): IdentityReply | undefined {
    const m = /^\/([^/]+)\/(v2\.0\/\.well-known\/openid-configuration|oauth2\/v2\.0\/token)$/.exec(url.pathname);
    if (!m) return undefined;
    const tenant = decodeURIComponent(m[1]);
    if (!this.principals.some((p) => p.tenantId === tenant)) {
      return aadError(400, 'invalid_request', 90002, `Tenant '${tenant}' not found.`);
    }
    if (m[2].startsWith('v2.0')) {
      if (method !== 'GET') return { status: 405, body: { error: 'invalid_request' } };
      const base = `${endpoint}/${tenant}`;
      return {
        status: 200,
        body: {
          token_endpoint: `${base}/oauth2/v2.0/token`,
          token_endpoint_auth_methods_supported: ['client_secret_post', 'private_key_jwt', 'client_secret_basic'],
          jwks_uri: `${endpoint}/${tenant}/discovery/v2.0/keys`,
          response_modes_supported: ['query', 'fragment', 'form_post'],
          subject_types_supported: ['pairwise'],
          id_token_signing_alg_values_supported: ['RS256'],
          response_types_supported: ['code', 'id_token', 'code id_token', 'id_token token'],
          scopes_supported: ['openid', 'profile', 'email', 'offline_access'],
          issuer: `${endpoint}/${tenant}/v2.0`,
          authorization_endpoint: `${base}/oauth2/v2.0/authorize`,
          end_session_endpoint: `${base}/oauth2/v2.0/logout`,
          tenant_region_scope: 'EU',
          cloud_instance_name: 'microsoftonline.com',
        },
      };
    }
    if (method !== 'POST') return { status: 405, body: { error: 'invalid_request' } };
    const form = new URLSearchParams(raw.toString('utf8'));
    if (form.get('grant_type') !== 'client_credentials') {
      return aadError(
        400,
        'unsupported_grant_type',
        70003,
        `The app requested an unsupported grant type '${form.get('grant_type') ?? ''}'.`,
      );
    }
    const clientId = form.get('client_id') ?? '';
    const principal = this.principals.find((p) => p.tenantId === tenant && p.clientId === clientId);
    if (!principal) {
      return aadError(
        400,
        'unauthorized_client',
        700016,
        `Application with identifier '${clientId}' was not found in the directory '${tenant}'.`,
      );
    }
    const secret = form.get('client_secret');
    if (secret === null || !secretMatches(secret, principal.clientSecret)) {
      return aadError(
        401,
        'invalid_client',
        7000215,
        `Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '${clientId}'.`,
      );
    }
    const scopes = (form.get('scope') ?? '').split(/\s+/).filter(Boolean);
    const resourceScopes = scopes.filter((s) => !['openid', 'profile', 'offline_access'].includes(s));
    if (resourceScopes.length !== 1 || !ARM_SCOPES.includes(resourceScopes[0])) {
      return aadError(
        400,
        'invalid_scope',
        1002012,
        `The provided value for scope ${scopes.join(' ')} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).`,
      );
    }
    const claims: TokenClaims = { tid: tenant, cid: clientId, exp: Date.now() + this.lifetimeSeconds * 1000 };
    const payload = Buffer.from(JSON.stringify(claims)).toString('base64url');
    const token = `${ISSUED_TOKEN_PREFIX}${payload}.${this.sign(payload)}`;
    return {
      status: 200,
      headers: { 'Cache-Control': 'no-store, no-cache', Pragma: 'no-cache' },
      body: { token_type: 'Bearer', expires_in: this.lifetimeSeconds, ext_expires_in: this.lifetimeSeconds, access_token: token },
    };
  }

  /**
   * Judges a bearer token: one of ours must be known and unexpired; any other is 'foreign' (the caller
   * decides whether foreign tokens are accepted).
   */
  check(token: string): { status: 'valid'; clientId: string } | { status: 'expired' | 'unknown' | 'foreign' } {
    if (!token.startsWith(ISSUED_TOKEN_PREFIX)) return { status: 'foreign' };
    const [payload, mac] = token.slice(ISSUED_TOKEN_PREFIX.length).split('.');
    if (!payload || !mac || !secretMatches(mac, this.sign(payload))) return { status: 'unknown' };
    const claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as TokenClaims;
    if (!this.principals.some((p) => p.tenantId === claims.tid && p.clientId === claims.cid)) return { status: 'unknown' };
    if (claims.exp <= Date.now()) return { status: 'expired' };
    return { status: 'valid', clientId: claims.cid };
  }
}
