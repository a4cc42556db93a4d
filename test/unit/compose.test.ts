import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { parse } from 'yaml';
import { parseConfig } from '../../src/config';

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
    for (const name of ['postgresql', 'temporal', 'temporal-ui', 'vcsim', 'azurite', 'worker']) assert.ok(s[name], `service ${name}`);
    assert.match(s.postgresql.image!, /^postgres:/);
    assert.match(s.temporal.image!, /^temporalio\/auto-setup:/);
    assert.equal(s.temporal.environment!.POSTGRES_SEEDS, 'postgresql');
    assert.match(s['temporal-ui'].image!, /^temporalio\/ui:/);
    assert.match(s.vcsim.image!, /^vmware\/vcsim:v0\.46\.3$/);
    assert.match(s.azurite.image!, /azurite:3\.35\.0$/);
    assert.ok(s.worker.build, 'worker is built from the repo');
    assert.ok(existsSync(path.join(ROOT, 'Dockerfile')));
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
    assert.deepEqual(deps(s.worker).sort(), ['azurite', 'temporal', 'vcsim']);
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
  });
});
