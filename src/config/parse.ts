import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { AzureCredentialConfig } from '../azure/credential';
import type { EncryptionConfig } from '../client/codec';
import { FailureType, RestoreError } from '../domain/errors';
import type { TransportMode } from '../domain/vsphere';
import {
  AZURE_DEVICE_ROOT,
  DEFAULT_PROXY_MAX_TASKS,
  type AgentInstallerConfig,
  type AppConfig,
  type AzureConfig,
  type ProxyConfig,
  type RepositoryConfig,
  type VSphereProfile,
} from './schema';

const TRANSPORTS: TransportMode[] = ['direct-san', 'direct-nas', 'hotadd', 'nbd'];
/** Throws the configuration failure that names the offending key. */
export function bad(key: string, message: string): never {
  throw new RestoreError(FailureType.Configuration, `config ${key}: ${message}`);
}

function str(obj: Record<string, unknown>, key: string, where: string, required = true): string | undefined {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (required) bad(`${where}.${key}`, 'is required');
    return undefined;
  }
  if (typeof v !== 'string' || v.length === 0) bad(`${where}.${key}`, `expected a non-empty string, got ${JSON.stringify(v)}`);
  return v;
}

function int(obj: Record<string, unknown>, key: string, where: string, dflt: number, min: number): number {
  const v = obj[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min)
    bad(`${where}.${key}`, `expected an integer >= ${min}, got ${JSON.stringify(v)}`);
  return v;
}

function bool(obj: Record<string, unknown>, key: string, where: string, dflt: boolean): boolean {
  const v = obj[key];
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') bad(`${where}.${key}`, `expected true or false, got ${JSON.stringify(v)}`);
  return v;
}

function record(v: unknown, where: string): Record<string, unknown> {
  if (v === undefined) return {};
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(where, `expected an object, got ${JSON.stringify(v)}`);
  return v as Record<string, unknown>;
}

function stringMap(v: unknown, where: string): Record<string, string> | undefined {
  if (v === undefined) return undefined;
  const r = record(v, where);
  for (const [k, val] of Object.entries(r)) if (typeof val !== 'string') bad(`${where}.${k}`, `expected a path string`);
  return r as Record<string, string>;
}

function parseEncryption(v: unknown): EncryptionConfig | undefined {
  if (v === undefined) return undefined;
  const w = 'temporal.encryption';
  const e = record(v, w);
  const keysRaw = record(e.keys, `${w}.keys`);
  const keys: EncryptionConfig['keys'] = {};
  for (const [id, kv] of Object.entries(keysRaw)) {
    const k = record(kv, `${w}.keys.${id}`);
    if ('key' in k) bad(`${w}.keys.${id}.key`, 'literal keys are not accepted; use keyFile or keyEnv');
    const keyFile = str(k, 'keyFile', `${w}.keys.${id}`, false);
    const keyEnv = str(k, 'keyEnv', `${w}.keys.${id}`, false);
    if (!keyFile === !keyEnv) bad(`${w}.keys.${id}`, 'give exactly one of keyFile and keyEnv');
    keys[id] = { keyFile, keyEnv };
  }
  const keyId = str(e, 'keyId', w)!;
  if (!keys[keyId]) bad(`${w}.keyId`, `'${keyId}' is not one of the keys (${Object.keys(keys).join(', ') || 'none'})`);
  return { keyId, keys };
}

/**
 * Refuses a vCenter profile that would send the password over plain http or trust any certificate, unless
 * the profile says `allowInsecure: true`.
 */
export function assertProfileTransport(name: string, profile: VSphereProfile): void {
  const where = `vsphere.profiles.${name}`;
  if (profile.allowInsecure) return;
  if (/^http:/i.test(profile.url)) {
    bad(
      `${where}.url`,
      `'${profile.url}' is plain http, which sends the vCenter password and session cookie unencrypted; ` +
        `use https:// (with a thumbprint for a self-signed certificate), or set ${where}.allowInsecure: true for a lab`,
    );
  }
  if (profile.insecure) {
    bad(
      `${where}.insecure`,
      `accepting any certificate lets anyone on the path read the vCenter password; pin the certificate with ` +
        `${where}.thumbprint instead, or set ${where}.allowInsecure: true for a lab`,
    );
  }
}

/** One warning per vCenter profile that is allowed to run without TLS verification; shown on every start. */
export function insecureWarnings(config: Pick<AppConfig, 'vsphere'>): string[] {
  const out: string[] = [];
  for (const [name, p] of Object.entries(config.vsphere.profiles)) {
    const what = [/^http:/i.test(p.url) ? 'plain http (password and session unencrypted)' : '', p.insecure ? 'any TLS certificate' : '']
      .filter(Boolean)
      .join(' and ');
    if (what) out.push(`warning: vSphere profile '${name}' (${p.url}) accepts ${what} because allowInsecure is set; labs only`);
  }
  return out;
}

/**
 * Validates a raw config object; every error names the offending key. `fromLab` is for the loader alone: it
 * marks the configuration the lab wrote into its state folder (see `loadAppConfig`).
 */
export function parseConfig(raw: unknown, source: string, baseDir: string, opts: { fromLab?: boolean } = {}): AppConfig {
  const fromLab = opts.fromLab === true;
  const root = record(raw, '(root)');
  const known = ['temporal', 'repository', 'vsphere', 'proxies', 'restore', 'azure', 'verifier', 'telemetry'];
  for (const k of Object.keys(root)) if (!known.includes(k)) bad(k, `unknown key (known: ${known.join(', ')})`);
  const t = record(root.temporal, 'temporal');
  const temporal = {
    address: str(t, 'address', 'temporal', false) ?? '127.0.0.1:7233',
    namespace: str(t, 'namespace', 'temporal', false) ?? 'default',
    taskQueue: str(t, 'taskQueue', 'temporal', false) ?? 'vmrestore',
    uiUrl: str(t, 'uiUrl', 'temporal', false),
    encryption: parseEncryption(t.encryption),
  };
  if (!/^[^:\s]+:\d+$/.test(temporal.address)) bad('temporal.address', `expected host:port, got '${temporal.address}'`);
  const repository = parseRepository(record(root.repository, 'repository'), baseDir);
  const v = record(root.vsphere, 'vsphere');
  const profilesRaw = record(v.profiles, 'vsphere.profiles');
  const profiles: Record<string, VSphereProfile> = {};
  for (const [name, pv] of Object.entries(profilesRaw)) {
    const where = `vsphere.profiles.${name}`;
    const p = record(pv, where);
    const url = str(p, 'url', where)!;
    if (!/^https?:\/\/[^/]+/.test(url)) bad(`${where}.url`, `expected an http(s):// URL, got '${url}'`);
    if ('password' in p) bad(`${where}.password`, 'literal passwords are not accepted; use passwordEnv or passwordFile');
    const profile: VSphereProfile = {
      url,
      username: str(p, 'username', where)!,
      passwordEnv: str(p, 'passwordEnv', where, false),
      passwordFile: str(p, 'passwordFile', where, false),
      thumbprint: str(p, 'thumbprint', where, false),
      insecure: bool(p, 'insecure', where, false),
      allowInsecure: bool(p, 'allowInsecure', where, false),
      datacenter: str(p, 'datacenter', where, false),
      datastore: str(p, 'datastore', where, false),
    };
    if (!profile.passwordEnv && !profile.passwordFile) bad(where, 'needs passwordEnv or passwordFile');
    assertProfileTransport(name, profile);
    if (profile.passwordFile) profile.passwordFile = path.resolve(baseDir, profile.passwordFile);
    profiles[name] = profile;
  }
  const defaultProfile = str(v, 'defaultProfile', 'vsphere', false) ?? Object.keys(profiles)[0] ?? 'default';
  if (Object.keys(profiles).length > 0 && !profiles[defaultProfile]) {
    bad('vsphere.defaultProfile', `'${defaultProfile}' is not a profile (known: ${Object.keys(profiles).join(', ')})`);
  }
  const proxiesRaw = root.proxies ?? [];
  if (!Array.isArray(proxiesRaw)) bad('proxies', 'expected an array');
  const proxies: ProxyConfig[] = proxiesRaw.map((pr, i) => {
    const where = `proxies[${i}]`;
    const p = record(pr, where);
    const transports = p.transports ?? ['nbd'];
    if (!Array.isArray(transports) || transports.some((m) => !TRANSPORTS.includes(m as TransportMode))) {
      bad(`${where}.transports`, `expected a list of ${TRANSPORTS.join('|')}, got ${JSON.stringify(transports)}`);
    }
    if (p.sanMounts !== undefined) {
      bad(`${where}.sanMounts`, 'replaced by sanLuns (datastore → the LUN block device): direct SAN writes the LUN, not a file');
    }
    const resolveAll = (m: Record<string, string> | undefined) =>
      m && Object.fromEntries(Object.entries(m).map(([k, val]) => [k, path.resolve(baseDir, val)]));
    return {
      name: str(p, 'name', where)!,
      vmName: str(p, 'vmName', where, false),
      transports: transports as TransportMode[],
      nasMounts: resolveAll(stringMap(p.nasMounts, `${where}.nasMounts`)),
      sanLuns: resolveAll(stringMap(p.sanLuns, `${where}.sanLuns`)),
      hotaddDevices: resolveAll(stringMap(p.hotaddDevices, `${where}.hotaddDevices`)),
      profile: str(p, 'profile', where, false),
      maxTasks: int(p, 'maxTasks', where, DEFAULT_PROXY_MAX_TASKS, 1),
      embeddedWorker: bool(p, 'embeddedWorker', where, false),
    };
  });
  const names = proxies.map((p) => p.name);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup !== undefined) bad('proxies', `proxy name '${dup}' is given twice`);
  for (const [i, n] of names.entries()) {
    // The name is part of a task queue name.
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(n)) bad(`proxies[${i}].name`, `'${n}' may hold only letters, digits, '.', '_' and '-'`);
  }
  const rs = record(root.restore, 'restore');
  const restore = {
    diskConcurrency: int(rs, 'diskConcurrency', 'restore', 2, 1),
    readConcurrency: int(rs, 'readConcurrency', 'restore', 4, 1),
    checkpointBytes: int(rs, 'checkpointBytes', 'restore', 32 * 1024 * 1024, 1024 * 1024),
    proxyWaitSeconds: int(rs, 'proxyWaitSeconds', 'restore', 1800, 1),
  };
  return {
    temporal,
    azure: root.azure === undefined ? undefined : parseAzure(record(root.azure, 'azure'), baseDir, fromLab),
    repository,
    vsphere: { defaultProfile, profiles },
    proxies,
    restore,
    verifier:
      root.verifier === undefined
        ? undefined
        : { embeddedWorker: bool(record(root.verifier, 'verifier'), 'embeddedWorker', 'verifier', false) },
    telemetry: root.telemetry === undefined ? undefined : parseTelemetry(record(root.telemetry, 'telemetry')),
    fromLab,
    source,
  };
}

function parseRepository(r: Record<string, unknown>, baseDir: string): RepositoryConfig {
  const w = 'repository';
  const known = ['path', 'url', 'tokenFile', 'tokenEnv', 'caFile', 'thumbprint', 'streamsPerDisk', 'serve'];
  if ('token' in r) bad(`${w}.token`, 'literal tokens are not accepted; use tokenFile or tokenEnv');
  for (const k of Object.keys(r)) if (!known.includes(k)) bad(`${w}.${k}`, `unknown key (known: ${known.join(', ')})`);
  const out: RepositoryConfig = { path: path.resolve(baseDir, str(r, 'path', w, false) ?? '.lab/repository') };
  const file = (key: string) => {
    const v = str(r, key, w, false);
    return v === undefined ? undefined : path.resolve(baseDir, v);
  };
  const url = str(r, 'url', w, false);
  if (url !== undefined) {
    if (!/^https:\/\/[^/]+\/?$/.test(url)) bad(`${w}.url`, `expected https://host:port of 'vmrestore repository serve', got '${url}'`);
    out.url = url.replace(/\/$/, '');
  }
  out.tokenFile = file('tokenFile');
  out.tokenEnv = str(r, 'tokenEnv', w, false);
  if (out.tokenFile && out.tokenEnv) bad(`${w}.tokenFile`, 'give either tokenFile or tokenEnv, not both');
  out.caFile = file('caFile');
  out.thumbprint = str(r, 'thumbprint', w, false);
  if (out.thumbprint !== undefined && !/^[0-9a-f]{64}$/i.test(out.thumbprint.replace(/:/g, '')))
    bad(`${w}.thumbprint`, `expected a SHA-256 fingerprint (64 hex digits, colons allowed), got '${out.thumbprint}'`);
  if (out.caFile && out.thumbprint) bad(`${w}.caFile`, 'give either caFile or thumbprint, not both');
  if (r.streamsPerDisk !== undefined) out.streamsPerDisk = int(r, 'streamsPerDisk', w, 1, 1);
  if ((out.streamsPerDisk ?? 1) > 16) bad(`${w}.streamsPerDisk`, `expected at most 16, got ${out.streamsPerDisk}`);
  if (out.url && !out.tokenFile && !out.tokenEnv) bad(w, `url '${out.url}' needs tokenFile or tokenEnv (the data mover's bearer token)`);
  if (r.serve !== undefined) {
    const s = record(r.serve, `${w}.serve`);
    for (const k of Object.keys(s))
      if (k !== 'certFile' && k !== 'keyFile') bad(`${w}.serve.${k}`, 'unknown key (known: certFile, keyFile)');
    const pem = (key: string) => path.resolve(baseDir, str(s, key, `${w}.serve`)!);
    out.serve = { certFile: pem('certFile'), keyFile: pem('keyFile') };
  }
  for (const k of ['tokenFile', 'tokenEnv', 'caFile', 'thumbprint', 'serve'] as const) if (out[k] === undefined) delete out[k];
  return out;
}

function parseTelemetry(t: Record<string, unknown>): AppConfig['telemetry'] {
  for (const k of Object.keys(t))
    if (k !== 'metrics' && k !== 'otlpEndpoint') bad(`telemetry.${k}`, 'unknown key (known: metrics, otlpEndpoint)');
  const metrics = str(t, 'metrics', 'telemetry', false);
  if (metrics !== undefined && !/^(\[[^\]]+\]|[^:\s]*):\d{1,5}$/.test(metrics))
    bad('telemetry.metrics', `expected host:port, got '${metrics}'`);
  const otlpEndpoint = str(t, 'otlpEndpoint', 'telemetry', false);
  if (otlpEndpoint !== undefined && !/^https?:\/\/[^/]+/.test(otlpEndpoint))
    bad(
      'telemetry.otlpEndpoint',
      `expected an http(s):// URL (the collector's OTLP/HTTP base, e.g. http://collector:4318), got '${otlpEndpoint}'`,
    );
  return { metrics, otlpEndpoint };
}

function parseCredential(a: Record<string, unknown>): AzureCredentialConfig | undefined {
  const tokenEnv = str(a, 'tokenEnv', 'azure', false);
  if (a.credential === undefined) return tokenEnv ? { type: 'tokenEnv', env: tokenEnv } : undefined;
  if (tokenEnv) bad('azure.tokenEnv', 'give either tokenEnv or credential, not both');
  const w = 'azure.credential';
  const c = record(a.credential, w);
  switch (c.type) {
    case 'clientSecret': {
      const cred = {
        type: 'clientSecret' as const,
        tenantId: str(c, 'tenantId', w)!,
        clientId: str(c, 'clientId', w)!,
        clientSecretEnv: str(c, 'clientSecretEnv', w, false),
        clientSecretFile: str(c, 'clientSecretFile', w, false),
        authorityHost: str(c, 'authorityHost', w, false),
      };
      if (!cred.clientSecretEnv === !cred.clientSecretFile)
        bad(`${w}.clientSecretEnv`, 'give exactly one of clientSecretEnv and clientSecretFile');
      if ('clientSecret' in c) bad(`${w}.clientSecret`, 'literal secrets are not accepted; use clientSecretEnv or clientSecretFile');
      return cred;
    }
    case 'default':
      return { type: 'default' };
    case 'tokenEnv':
      return { type: 'tokenEnv', env: str(c, 'env', w)! };
    default:
      return bad(`${w}.type`, `expected 'clientSecret', 'default' or 'tokenEnv', got ${JSON.stringify(c.type)}`);
  }
}

function parseAgentInstaller(v: unknown, baseDir: string): AgentInstallerConfig | undefined {
  if (v === undefined) return undefined;
  const w = 'azure.windowsAgentInstaller';
  const r = record(v, w);
  for (const k of Object.keys(r)) if (k !== 'path' && k !== 'sha256') bad(`${w}.${k}`, 'unknown key (known: path, sha256)');
  const sha256 = str(r, 'sha256', w, false);
  if (sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(sha256))
    bad(`${w}.sha256`, `expected 64 hex digits, got ${JSON.stringify(sha256)}`);
  const file = path.resolve(baseDir, str(r, 'path', w)!);
  return sha256 === undefined ? { path: file } : { path: file, sha256: sha256.toLowerCase() };
}

function readSecretFile(file: string, key: string): string {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (err) {
    return bad(key, `cannot read '${file}': ${(err as Error).message}`);
  }
}

function parseAzure(a: Record<string, unknown>, baseDir: string, fromLab: boolean): AzureConfig {
  const w = 'azure';
  const blobConnectionStringEnv = str(a, 'blobConnectionStringEnv', w, false);
  const blobConnectionStringFile = str(a, 'blobConnectionStringFile', w, false);
  if (blobConnectionStringEnv && blobConnectionStringFile)
    bad('azure.blobConnectionStringFile', 'give either blobConnectionStringEnv or blobConnectionStringFile, not both');
  const location = str(a, 'location', w)!;
  const locations = a.locations === undefined ? [location] : (a.locations as string[]);
  if (!Array.isArray(locations) || locations.some((l) => typeof l !== 'string'))
    bad('azure.locations', 'expected a list of location names');
  const proxiesRaw = (a.proxies ?? []) as unknown[];
  if (!Array.isArray(proxiesRaw)) bad('azure.proxies', 'expected an array');
  const helpersRaw = record(a.helpers, 'azure.helpers');
  return {
    subscriptionId: str(a, 'subscriptionId', w)!,
    resourceGroup: str(a, 'resourceGroup', w)!,
    location,
    locations,
    subnetId: str(a, 'subnetId', w)!,
    storageAccountId: str(a, 'storageAccountId', w)!,
    container: str(a, 'container', w, false) ?? 'vhds',
    defaultVmSize: str(a, 'defaultVmSize', w, false) ?? 'Standard_D2s_v3',
    armEndpoint: str(a, 'armEndpoint', w, false),
    caCertPath: str(a, 'caCertPath', w, false),
    credential: parseCredential(a),
    ...(blobConnectionStringFile === undefined
      ? {}
      : { blobConnectionString: readSecretFile(path.resolve(baseDir, blobConnectionStringFile), 'azure.blobConnectionStringFile') }),
    blobConnectionStringEnv,
    leaseHolderCheckSeconds: int(a, 'leaseHolderCheckSeconds', w, 60, 1),
    windowsAgentInstaller: parseAgentInstaller(a.windowsAgentInstaller, baseDir),
    ...(fromLab ? { allowTestSwitches: true } : {}),
    proxies: proxiesRaw.map((pr, i) => {
      const p = record(pr, `azure.proxies[${i}]`);
      return {
        name: str(p, 'name', `azure.proxies[${i}]`)!,
        resourceGroup: str(p, 'resourceGroup', `azure.proxies[${i}]`, false) ?? str(a, 'resourceGroup', w)!,
        vmName: str(p, 'vmName', `azure.proxies[${i}]`)!,
        idleTimeoutSeconds: int(p, 'idleTimeoutSeconds', `azure.proxies[${i}]`, 300, 0),
      };
    }),
    helpers: Object.fromEntries(
      Object.entries(helpersRaw).map(([loc, hv]) => {
        const h = record(hv, `azure.helpers.${loc}`);
        return [
          loc,
          {
            resourceGroup: str(h, 'resourceGroup', `azure.helpers.${loc}`, false) ?? str(a, 'resourceGroup', w)!,
            vmName: str(h, 'vmName', `azure.helpers.${loc}`)!,
            idleTimeoutSeconds: int(h, 'idleTimeoutSeconds', `azure.helpers.${loc}`, 60, 0),
            taskQueue: str(h, 'taskQueue', `azure.helpers.${loc}`, false),
            embeddedWorker: bool(h, 'embeddedWorker', `azure.helpers.${loc}`, false),
            deviceRoot: str(h, 'deviceRoot', `azure.helpers.${loc}`, false) ?? AZURE_DEVICE_ROOT,
          },
        ];
      }),
    ),
  };
}
