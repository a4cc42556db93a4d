import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { parseConfig } from '../../src/config';
import { SEARCH_ATTRIBUTES } from '../../src/domain/search-attributes';
import { TEMPORAL_SERVER_VERSION, TEMPORAL_UI_SERVER } from '../../src/lab/cluster/tools';

const ROOT = path.resolve(__dirname, '..', '..');
type Service = {
  image?: string;
  build?: unknown;
  depends_on?: Record<string, unknown> | string[];
  environment?: Record<string, string>;
  volumes?: string[];
  secrets?: string[];
  ports?: string[];
};
const compose = parse(readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8')) as {
  services: Record<string, Service>;
  volumes: Record<string, unknown>;
  secrets: Record<string, { file: string }>;
};

const deps = (s: Service) => (Array.isArray(s.depends_on) ? s.depends_on : Object.keys(s.depends_on ?? {}));

describe('docker-compose.yml', () => {
  it('has Temporal on PostgreSQL, the Web UI, vcsim, Azurite and the worker built from this repo', () => {
    const s = compose.services;
    for (const name of ['postgresql', 'temporal', 'temporal-ui', 'vcsim', 'azurite', 'armsim', 'worker'])
      assert.ok(s[name], `service ${name}`);
    assert.match(s.postgresql.image!, /^postgres:/);
    assert.match(s.temporal.image!, /^temporalio\/auto-setup:/);
    assert.equal(s.temporal.environment!.POSTGRES_SEEDS, 'postgresql');
    assert.match(s['temporal-ui'].image!, /^temporalio\/ui:/);
    assert.match(s.vcsim.image!, /^vmware\/vcsim:v0\.46\.3$/);
    assert.match(s.azurite.image!, /azurite:3\.37\.0$/);
    assert.ok(s.worker.build, 'worker is built from the repo');
    assert.ok(existsSync(path.join(ROOT, 'Dockerfile')));
  });

  it('runs the Temporal server, UI and persistence that `npm run test:cluster` tests', () => {
    const s = compose.services;
    const version = TEMPORAL_SERVER_VERSION.replace(/^v/, '');
    assert.equal(s.temporal.image, `temporalio/auto-setup:${version}`);
    assert.equal(s['temporal-admin'].image, `temporalio/admin-tools:${version}`);
    assert.equal(s['temporal-ui'].image, `temporalio/ui:${TEMPORAL_UI_SERVER.version.replace(/^v/, '')}`);
    assert.equal(s.temporal.environment!.DB, 'postgres12');
    // Debian 12's PostgreSQL, which the cluster suite runs on.
    assert.equal(s.postgresql.image, 'postgres:15');
    const register = JSON.stringify((s['temporal-admin'] as { command?: unknown }).command);
    for (const name of Object.keys(SEARCH_ATTRIBUTES)) assert.ok(register.includes(name), `temporal-admin registers ${name}`);
  });

  it('wires every dependency, volume, secret and address to something defined', () => {
    const s = compose.services;
    for (const [name, svc] of Object.entries(s)) {
      for (const d of deps(svc)) assert.ok(s[d], `${name} depends on undefined service ${d}`);
      for (const v of svc.volumes ?? []) {
        const src = v.split(':')[0];
        if (src.startsWith('.')) assert.ok(existsSync(path.join(ROOT, src)), `${name} mounts missing file ${src}`);
        else assert.ok(src in compose.volumes, `${name} uses undeclared volume ${src}`);
      }
      for (const sec of svc.secrets ?? []) assert.ok(compose.secrets[sec], `${name} uses undeclared secret ${sec}`);
    }
    for (const sec of Object.values(compose.secrets)) assert.ok(existsSync(path.join(ROOT, sec.file)), `secret file ${sec.file}`);
    assert.deepEqual(deps(s.temporal), ['postgresql']);
    assert.deepEqual(deps(s.worker).sort(), ['armsim', 'azurite', 'temporal', 'vcsim']);
    assert.deepEqual(deps(s.armsim), ['azurite']);
    assert.equal(s['temporal-ui'].environment!.TEMPORAL_ADDRESS, 'temporal:7233');
    assert.equal(s.worker.environment!.VMRESTORE_TEMPORAL_ADDRESS, 'temporal:7233');
  });

  it("the worker's config parses and points at compose services", () => {
    const file = path.join(ROOT, 'deploy', 'compose-config.json');
    const cfg = parseConfig(JSON.parse(readFileSync(file, 'utf8')), file, path.dirname(file));
    const host = (u: string) => new URL(u).hostname;
    assert.ok(compose.services[cfg.temporal.address.split(':')[0]], 'temporal address is a service');
    for (const p of Object.values(cfg.vsphere.profiles)) {
      assert.ok(compose.services[host(p.url)], `vCenter ${p.url} is a service`);
      assert.equal(p.passwordFile, '/run/secrets/vcsim_password');
    }
    // Azure: the simulator and its identity endpoint are services, its CA comes through the shared volume,
    // and both sides read the app registration's secret from the same compose secret.
    const a = cfg.azure!;
    assert.ok(compose.services[host(a.armEndpoint!)], 'ARM endpoint is a service');
    const cred = a.credential;
    assert.ok(cred?.type === 'clientSecret');
    assert.ok(compose.services[host(cred.authorityHost!)], 'authority host is a service');
    assert.equal(cred.clientSecretFile, '/run/secrets/azure_client_secret');
    assert.ok(compose.services.worker.secrets!.includes('azure_client_secret'));
    assert.ok(compose.services.armsim.secrets!.includes('azure_client_secret'));
    const mountOf = (svc: Service, target: string) => svc.volumes!.find((v) => v.split(':')[1] === target)?.split(':')[0];
    assert.equal(mountOf(compose.services.worker, path.dirname(a.caCertPath!)), mountOf(compose.services.armsim, '/var/lib/armsim'));
    const principals = JSON.parse(readFileSync(path.join(ROOT, 'deploy', 'armsim-principals.json'), 'utf8')) as Array<
      Record<string, string>
    >;
    assert.deepEqual(principals, [{ tenantId: cred.tenantId, clientId: cred.clientId, clientSecretFile: cred.clientSecretFile }]);
    const cmd = (compose.services.armsim as { command?: string[] }).command!;
    assert.equal(cmd[cmd.indexOf('--cert-host') + 1], host(a.armEndpoint!), 'the certificate names the service');
    const conn = compose.services.worker.environment![a.blobConnectionStringEnv!];
    assert.match(conn, /BlobEndpoint=http:\/\/azurite:10000\//);
  });
});
