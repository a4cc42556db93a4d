import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { VSphereSessions } from '../../src/activities/vsphere-sessions';
import { labConfig } from '../../src/app-config';
import {
  applyEnvOverrides,
  assertProfileTransport,
  helperTaskQueue,
  insecureWarnings,
  parseConfig,
  resolvePassword,
} from '../../src/config';
import type { LabState } from '../../src/lab/lab';

const base = {
  vsphere: { profiles: { prod: { url: 'https://vc.example.com/sdk', username: 'svc-restore', passwordEnv: 'VC_PASS' } } },
  proxies: [{ name: 'p1', transports: ['nbd', 'hotadd'], vmName: 'proxy01' }],
};

const azureBase = {
  subscriptionId: 'sub',
  resourceGroup: 'rg',
  location: 'westeurope',
  subnetId: '/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/s',
  storageAccountId: '/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa',
};

describe('configuration', () => {
  it('accepts a valid file and fills defaults', () => {
    const cfg = parseConfig(base, 'test', '/etc/vmrestore');
    assert.equal(cfg.temporal.address, '127.0.0.1:7233');
    assert.equal(cfg.vsphere.defaultProfile, 'prod');
    assert.equal(cfg.repository.path, '/etc/vmrestore/.lab/repository');
    assert.deepEqual(cfg.proxies[0].transports, ['nbd', 'hotadd']);
  });
  it('names the bad key in every error', () => {
    assert.throws(() => parseConfig({ ...base, tempral: {} }, 't', '/'), /config tempral: unknown key/);
    assert.throws(
      () => parseConfig({ ...base, temporal: { address: 'nohostport' } }, 't', '/'),
      /config temporal\.address: expected host:port/,
    );
    assert.throws(
      () => parseConfig({ vsphere: { profiles: { prod: { ...base.vsphere.profiles.prod, url: 'vc.example.com' } } } }, 't', '/'),
      /config vsphere\.profiles\.prod\.url: expected an http\(s\):\/\/ URL/,
    );
    assert.throws(
      () => parseConfig({ vsphere: { profiles: { prod: { ...base.vsphere.profiles.prod, password: 'secret' } } } }, 't', '/'),
      /config vsphere\.profiles\.prod\.password: literal passwords are not accepted/,
    );
    assert.throws(
      () => parseConfig({ ...base, proxies: [{ name: 'p', transports: ['ftp'] }] }, 't', '/'),
      /config proxies\[0\]\.transports/,
    );
    assert.throws(
      () => parseConfig({ ...base, restore: { diskConcurrency: 0 } }, 't', '/'),
      /config restore\.diskConcurrency: expected an integer >= 1/,
    );
  });
  it('reads helper appliances with their task queues', () => {
    const azure = {
      ...azureBase,
      helpers: { westeurope: { vmName: 'helper-we' }, northeurope: { vmName: 'helper-ne', taskQueue: 'ne-helper', embeddedWorker: true } },
    };
    const cfg = parseConfig({ ...base, azure }, 't', '/');
    const we = cfg.azure!.helpers.westeurope;
    assert.equal(we.embeddedWorker, false, 'a real helper appliance runs its own worker');
    assert.equal(we.idleTimeoutSeconds, 60);
    assert.equal(helperTaskQueue(cfg, 'westeurope', we), 'vmrestore-helper-westeurope');
    assert.equal(helperTaskQueue(cfg, 'northeurope', cfg.azure!.helpers.northeurope), 'ne-helper');
    assert.throws(
      () => parseConfig({ ...base, azure: { ...azure, helpers: { westeurope: { vmName: 'h', embeddedWorker: 'yes' } } } }, 't', '/'),
      /config azure\.helpers\.westeurope\.embeddedWorker: expected true or false/,
    );
  });
  it('reads the Azure sign-in and refuses literal or ambiguous secrets', () => {
    const azure = azureBase;
    const sp = { type: 'clientSecret', tenantId: 't', clientId: 'c', clientSecretEnv: 'AZ_SECRET' };
    assert.deepEqual(parseConfig({ ...base, azure: { ...azure, credential: sp } }, 't', '/').azure!.credential, {
      ...sp,
      clientSecretFile: undefined,
      authorityHost: undefined,
    });
    assert.deepEqual(parseConfig({ ...base, azure: { ...azure, tokenEnv: 'ARM_TOKEN' } }, 't', '/').azure!.credential, {
      type: 'tokenEnv',
      env: 'ARM_TOKEN',
    });
    assert.equal(parseConfig({ ...base, azure }, 't', '/').azure!.credential, undefined);
    const bad = (credential: unknown) => () => parseConfig({ ...base, azure: { ...azure, credential } }, 't', '/');
    assert.throws(bad({ ...sp, clientSecret: 'x' }), /config azure\.credential\.clientSecret: literal secrets are not accepted/);
    assert.throws(bad({ ...sp, clientSecretFile: '/f' }), /give exactly one of clientSecretEnv and clientSecretFile/);
    assert.throws(bad({ type: 'password' }), /config azure\.credential\.type: expected 'clientSecret', 'default' or 'tokenEnv'/);
    assert.throws(bad({ type: 'clientSecret', clientId: 'c', clientSecretEnv: 'E' }), /config azure\.credential\.tenantId: is required/);
  });
  it('applies environment overrides and validates them', () => {
    const cfg = parseConfig(base, 't', '/');
    const o = applyEnvOverrides(cfg, { VMRESTORE_TEMPORAL_ADDRESS: 'temporal.internal:7233', VMRESTORE_TASK_QUEUE: 'restores' });
    assert.equal(o.temporal.address, 'temporal.internal:7233');
    assert.equal(o.temporal.taskQueue, 'restores');
    assert.throws(() => applyEnvOverrides(cfg, { VMRESTORE_TEMPORAL_ADDRESS: 'bad' }), /VMRESTORE_TEMPORAL_ADDRESS/);
  });
  it('resolves passwords only from env or file, naming the missing source', () => {
    const cfg = parseConfig(base, 't', '/');
    assert.equal(resolvePassword('prod', cfg.vsphere.profiles.prod, { VC_PASS: 's3cret' }), 's3cret');
    assert.throws(() => resolvePassword('prod', cfg.vsphere.profiles.prod, {}), /passwordEnv: environment variable VC_PASS is not set/);
  });
  it('refuses an http:// vCenter or insecure: true unless the profile says allowInsecure, and warns when it does', async () => {
    const prod = base.vsphere.profiles.prod;
    const withProfile = (p: Record<string, unknown>) => ({ ...base, vsphere: { profiles: { prod: { ...prod, ...p } } } });
    assert.throws(
      () => parseConfig(withProfile({ url: 'http://vc.example.com/sdk' }), 't', '/'),
      /config vsphere\.profiles\.prod\.url: 'http:\/\/vc\.example\.com\/sdk' is plain http.*set vsphere\.profiles\.prod\.allowInsecure: true/,
    );
    assert.throws(
      () => parseConfig(withProfile({ insecure: true }), 't', '/'),
      /config vsphere\.profiles\.prod\.insecure: accepting any certificate .*pin the certificate with vsphere\.profiles\.prod\.thumbprint/,
    );
    assert.throws(
      () => parseConfig(withProfile({ insecure: 'yes' }), 't', '/'),
      /config vsphere\.profiles\.prod\.insecure: expected true or false/,
    );
    assert.throws(
      () => parseConfig(withProfile({ insecure: true, allowInsecure: 'true' }), 't', '/'),
      /config vsphere\.profiles\.prod\.allowInsecure: expected true or false/,
    );

    const strict = parseConfig(withProfile({ thumbprint: 'AB:CD' }), 't', '/');
    assert.deepEqual(insecureWarnings(strict), []);
    const lab = parseConfig(withProfile({ url: 'http://vcsim:8989/sdk', insecure: true, allowInsecure: true }), 't', '/');
    assert.equal(lab.vsphere.profiles.prod.allowInsecure, true);
    const warnings = insecureWarnings(lab);
    assert.equal(warnings.length, 1);
    assert.match(
      warnings[0],
      /vSphere profile 'prod' \(http:\/\/vcsim:8989\/sdk\) accepts plain http .* and any TLS certificate because allowInsecure is set/,
    );

    // A config built in code gets the same check where the worker opens the session, before any password is read.
    const built = parseConfig(base, 't', '/');
    built.vsphere.profiles.prod = { ...built.vsphere.profiles.prod, insecure: true };
    await assert.rejects(new VSphereSessions(built).get('prod'), /config vsphere\.profiles\.prod\.insecure: accepting any certificate/);
  });
  it('keeps the lab config and the compose config working: https with a pinned thumbprint, or the explicit flag', () => {
    const lab = labConfig({
      temporal: { pid: 1, port: 7233, uiPort: 8233, address: '127.0.0.1:7233', namespace: 'default', ui: 'http://127.0.0.1:8233' },
      vsphere: {
        pid: 1,
        port: 8989,
        url: 'https://127.0.0.1:8989/sdk',
        username: 'administrator@vsphere.local',
        password: 'x',
        passwordFile: '/lab/secrets/vcsim-password',
        thumbprint: 'AA:BB',
        datacenter: 'DC0',
        datastore: 'LocalDS_0',
        datastorePaths: {},
        proxyVmName: 'vmrestore-proxy',
      },
    } as unknown as LabState);
    for (const [name, p] of Object.entries(lab.vsphere.profiles)) assert.doesNotThrow(() => assertProfileTransport(name, p));
    assert.deepEqual(insecureWarnings(lab), []);
    const file = path.join(__dirname, '..', '..', 'deploy', 'compose-config.json');
    const compose = parseConfig(JSON.parse(readFileSync(file, 'utf8')), file, path.dirname(file));
    assert.equal(insecureWarnings(compose).length, 1, 'the compose lab runs vcsim with its self-signed certificate, and says so');
  });
});
