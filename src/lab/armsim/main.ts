/**
 * CLI for running the ARM simulator as a child process of the lab. Options come from flags or, when a flag
 * is absent, from ARMSIM_* environment variables. When listening it prints one JSON line
 * `{"endpoint":...,"caCertPath":...,"port":...,"pid":...,"adminTokenFile":...}` on stdout; SIGTERM/SIGINT close it cleanly.
 *
 *   node --import tsx src/lab/armsim/main.ts --state-dir DIR --subscription-id ID \
 *     --blob-endpoint http://127.0.0.1:10000/devstoreaccount1 --blob-account devstoreaccount1 --blob-key KEY \
 *     [--port 0] [--host 127.0.0.1] [--no-tls] [--lro-polls 1] [--lro-max-ms 10000] [--retry-after 0]
 *     [--seed JSON|@file.json] [--quotas JSON|@file.json]
 *     [--principals JSON|@file.json (app registrations: [{tenantId, clientId, clientSecret | clientSecretFile}])]
 *     [--only-issued-tokens] [--cert-host NAME]...
 *     [--device-root DIR (running VMs' disks as DIR/<vm>/scsi1/lun<N>)] [--disk-access-port 0]
 */
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { startArmSimulator } from './server';
import type { SeedOptions } from './seed';
import type { QuotaLimits } from './context';
import type { ServicePrincipal } from './identity';

function jsonArg<T>(v: string | undefined, what: string): T | undefined {
  if (v === undefined || v === '') return undefined;
  const text = v.startsWith('@') ? fs.readFileSync(v.slice(1), 'utf8') : v;
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new Error(`${what}: invalid JSON: ${(err as Error).message}`);
  }
}

function num(v: string | undefined, what: string): number | undefined {
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${what}: not a number: ${v}`);
  return n;
}

/** A principal as given on the command line: the secret inline or in a file (a container secret, say). */
type PrincipalArg = Omit<ServicePrincipal, 'clientSecret'> & { clientSecret?: string; clientSecretFile?: string };

function readPrincipals(list: PrincipalArg[] | undefined): ServicePrincipal[] | undefined {
  return list?.map((p, i) => {
    const clientSecret = p.clientSecret ?? (p.clientSecretFile ? fs.readFileSync(p.clientSecretFile, 'utf8').trim() : undefined);
    if (!p.tenantId || !p.clientId || !clientSecret)
      throw new Error(`principals[${i}]: needs tenantId, clientId and clientSecret or clientSecretFile`);
    return { tenantId: p.tenantId, clientId: p.clientId, clientSecret };
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'state-dir': { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      tls: { type: 'boolean' },
      'no-tls': { type: 'boolean' },
      'subscription-id': { type: 'string' },
      'blob-endpoint': { type: 'string' },
      'blob-account': { type: 'string' },
      'blob-key': { type: 'string' },
      'lro-polls': { type: 'string' },
      'lro-max-ms': { type: 'string' },
      'retry-after': { type: 'string' },
      'require-auth': { type: 'string' },
      principals: { type: 'string' },
      'only-issued-tokens': { type: 'boolean' },
      'cert-host': { type: 'string', multiple: true },
      seed: { type: 'string' },
      quotas: { type: 'string' },
      'device-root': { type: 'string' },
      'disk-access-port': { type: 'string' },
    },
    strict: true,
  });
  const env = process.env;
  const need = (v: string | undefined, flag: string, envName: string): string => {
    if (!v) throw new Error(`missing --${flag} (or ${envName})`);
    return v;
  };
  const tlsEnv = env.ARMSIM_TLS;
  const tls = values['no-tls'] ? false : values.tls ? true : tlsEnv !== undefined ? !/^(0|false|no)$/i.test(tlsEnv) : true;
  const requireAuthRaw = values['require-auth'] ?? env.ARMSIM_REQUIRE_AUTH;
  const sim = await startArmSimulator({
    stateDir: need(values['state-dir'] ?? env.ARMSIM_STATE_DIR, 'state-dir', 'ARMSIM_STATE_DIR'),
    port: num(values.port ?? env.ARMSIM_PORT, 'port'),
    host: values.host ?? env.ARMSIM_HOST,
    tls,
    subscriptionId: need(values['subscription-id'] ?? env.ARMSIM_SUBSCRIPTION_ID, 'subscription-id', 'ARMSIM_SUBSCRIPTION_ID'),
    blob: {
      endpoint: need(values['blob-endpoint'] ?? env.ARMSIM_BLOB_ENDPOINT, 'blob-endpoint', 'ARMSIM_BLOB_ENDPOINT'),
      accountName: need(values['blob-account'] ?? env.ARMSIM_BLOB_ACCOUNT, 'blob-account', 'ARMSIM_BLOB_ACCOUNT'),
      accountKey: need(values['blob-key'] ?? env.ARMSIM_BLOB_KEY, 'blob-key', 'ARMSIM_BLOB_KEY'),
    },
    lroPolls: num(values['lro-polls'] ?? env.ARMSIM_LRO_POLLS, 'lro-polls'),
    lroMaxMs: num(values['lro-max-ms'] ?? env.ARMSIM_LRO_MAX_MS, 'lro-max-ms'),
    retryAfterSeconds: num(values['retry-after'] ?? env.ARMSIM_RETRY_AFTER, 'retry-after'),
    requireAuth: requireAuthRaw === undefined ? undefined : !/^(0|false|no)$/i.test(requireAuthRaw),
    seed: jsonArg<SeedOptions>(values.seed ?? env.ARMSIM_SEED, 'seed'),
    quotas: jsonArg<Partial<QuotaLimits>>(values.quotas ?? env.ARMSIM_QUOTAS, 'quotas'),
    principals: readPrincipals(jsonArg<PrincipalArg[]>(values.principals ?? env.ARMSIM_PRINCIPALS, 'principals')),
    certHosts: values['cert-host'] ?? (env.ARMSIM_CERT_HOSTS ? env.ARMSIM_CERT_HOSTS.split(',') : undefined),
    onlyIssuedTokens: values['only-issued-tokens'] ?? /^(1|true|yes)$/i.test(env.ARMSIM_ONLY_ISSUED_TOKENS ?? ''),
    deviceRoot: values['device-root'] ?? env.ARMSIM_DEVICE_ROOT,
    diskAccessPort: num(values['disk-access-port'] ?? env.ARMSIM_DISK_ACCESS_PORT, 'disk-access-port'),
  });
  process.stdout.write(
    `${JSON.stringify({ endpoint: sim.endpoint, caCertPath: sim.caCertPath ?? null, port: sim.port, diskAccessEndpoint: sim.diskAccessEndpoint, pid: process.pid, stateFile: sim.stateFile, adminTokenFile: sim.adminTokenFile ?? null })}\n`,
  );
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    void sim.close().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`armsim: close failed: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`armsim: ${(err as Error).message}\n`);
  process.exit(1);
});
