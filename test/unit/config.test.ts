import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { VSphereSessions } from '../../src/activities/vsphere/sessions';
import { labConfig } from '../../src/lab';
import {
  applyEnvOverrides,
  assertProfileTransport,
  helperTaskQueue,
  insecureWarnings,
  labConfigPath,
  loadAppConfig,
  parseConfig,
  resolvePassword,
} from '../../src/config';
import type { LabState } from '../../src/lab/lab';
import { checkAgentInstaller } from '../../src/azure/agent-installer';
import { RestoreError } from '../../src/domain/errors';
import { LAB_AGENT_INSTALLER_CONTENT, labAgentInstaller } from '../../src/lab/agent-installer';

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
  it('accepts the verifier key a config file names (the lab writes it too)', () => {
    assert.deepEqual(parseConfig({ ...base, verifier: { embeddedWorker: true } }, 't', '/').verifier, { embeddedWorker: true });
    assert.equal(parseConfig(base, 't', '/').verifier, undefined);
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
  it('reads the repository data mover settings and refuses literal tokens, plain http and half settings', () => {
    const fp = 'AB:'.repeat(31) + 'AB';
    const worker = parseConfig(
      { repository: { url: 'https://repo01:8443/', tokenFile: 'repo.token', thumbprint: fp } },
      't',
      '/etc/vmrestore',
    ).repository;
    assert.deepEqual(worker, {
      path: '/etc/vmrestore/.lab/repository',
      url: 'https://repo01:8443',
      tokenFile: '/etc/vmrestore/repo.token',
      thumbprint: fp,
    });
    const host = parseConfig(
      { repository: { path: '/srv/repo', tokenEnv: 'REPO_TOKEN', serve: { certFile: 'tls/repo.crt', keyFile: 'tls/repo.key' } } },
      't',
      '/etc/vmrestore',
    );
    assert.deepEqual(host.repository.serve, { certFile: '/etc/vmrestore/tls/repo.crt', keyFile: '/etc/vmrestore/tls/repo.key' });
    assert.deepEqual(host.vsphere.profiles, {}, 'a repository host config needs no vCenter profile');
    const bad = (repository: unknown, re: RegExp) => assert.throws(() => parseConfig({ repository }, 't', '/'), re);
    bad({ url: 'https://r:1', token: 'secret-secret-secret' }, /config repository\.token: literal tokens are not accepted/);
    bad({ url: 'http://r:1', tokenEnv: 'T' }, /config repository\.url: expected https:\/\/host:port/);
    bad({ url: 'https://r:1' }, /config repository: url 'https:\/\/r:1' needs tokenFile or tokenEnv/);
    bad({ url: 'https://r:1', tokenEnv: 'T', thumbprint: 'abc' }, /config repository\.thumbprint: expected a SHA-256 fingerprint/);
    bad({ url: 'https://r:1', tokenEnv: 'T', tokenFile: 'f' }, /config repository\.tokenFile: give either tokenFile or tokenEnv/);
    bad({ serve: { certFile: 'c' } }, /config repository\.serve\.keyFile: is required/);
    bad({ pth: '/x' }, /config repository\.pth: unknown key/);
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

describe('azure.windowsAgentInstaller', () => {
  const parse = (windowsAgentInstaller: unknown) =>
    parseConfig({ ...base, azure: { ...azureBase, windowsAgentInstaller } }, 't', '/etc/vmrestore').azure!.windowsAgentInstaller;

  it('is optional; a relative path is taken from the config file directory; the digest is kept in lower case', () => {
    assert.equal(parse(undefined), undefined);
    assert.deepEqual(parse({ path: 'agent/WindowsAzureVmAgent.msi', sha256: 'AB'.repeat(32) }), {
      path: '/etc/vmrestore/agent/WindowsAzureVmAgent.msi',
      sha256: 'ab'.repeat(32),
    });
  });

  it('names the bad key', () => {
    assert.throws(() => parse('/srv/agent.msi'), /config azure\.windowsAgentInstaller: expected an object/);
    assert.throws(() => parse({}), /config azure\.windowsAgentInstaller\.path: is required/);
    assert.throws(() => parse({ path: '/a.msi', sha256: 'abc' }), /config azure\.windowsAgentInstaller\.sha256: expected 64 hex digits/);
    assert.throws(() => parse({ path: '/a.msi', sha: 'x' }), /config azure\.windowsAgentInstaller\.sha: unknown key/);
  });

  it('VMRESTORE_AZURE_WINDOWS_AGENT_INSTALLER sets a path or, with none, removes it', () => {
    const cfg = parseConfig({ ...base, azure: { ...azureBase, windowsAgentInstaller: { path: '/a.msi' } } }, 't', '/');
    assert.equal(applyEnvOverrides(cfg, { VMRESTORE_AZURE_WINDOWS_AGENT_INSTALLER: 'none' }).azure!.windowsAgentInstaller, undefined);
    assert.deepEqual(applyEnvOverrides(cfg, { VMRESTORE_AZURE_WINDOWS_AGENT_INSTALLER: '/b.msi' }).azure!.windowsAgentInstaller, {
      path: '/b.msi',
    });
    assert.deepEqual(applyEnvOverrides(cfg, {}).azure!.windowsAgentInstaller, { path: '/a.msi' });
  });

  it('the file is checked when a Windows restore starts: readable, non-empty, a regular file, the configured digest', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-agent-cfg-'));
    try {
      const file = path.join(dir, 'WindowsAzureVmAgent.msi');
      writeFileSync(file, 'installer bytes');
      const sha256 = createHash('sha256').update('installer bytes').digest('hex');
      assert.deepEqual(await checkAgentInstaller({ path: file }), { path: file, sha256, sizeBytes: 15 });
      assert.deepEqual(await checkAgentInstaller({ path: file, sha256 }), { path: file, sha256, sizeBytes: 15 });
      await assert.rejects(
        checkAgentInstaller({ path: file, sha256: '0'.repeat(64) }),
        (e: Error) =>
          e instanceof RestoreError &&
          e.type === 'Configuration' &&
          /azure\.windowsAgentInstaller: .* has SHA-256 [0-9a-f]{64}, not the configured 0{64}/.test(e.message),
      );
      await assert.rejects(
        checkAgentInstaller({ path: path.join(dir, 'missing.msi') }),
        /azure\.windowsAgentInstaller: .*missing\.msi cannot be read \(ENOENT\)/,
      );
      await assert.rejects(checkAgentInstaller({ path: dir }), /azure\.windowsAgentInstaller: .* is not a regular file/);
      writeFileSync(file, '');
      await assert.rejects(checkAgentInstaller({ path: file }), /azure\.windowsAgentInstaller: .* is empty/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the lab config supplies its small stand-in installer', () => {
    const file = labAgentInstaller();
    const content = readFileSync(file);
    assert.ok(content.equals(LAB_AGENT_INSTALLER_CONTENT));
    assert.ok(content.length < 1024);
    assert.match(content.toString(), /lab stand-in .*not an installer/);
  });
});

describe('the lab writes a config file the loader reads like any other', () => {
  const withLabDir = (fn: (dir: string, env: NodeJS.ProcessEnv) => void) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-labcfg-'));
    try {
      fn(dir, { VMRESTORE_LAB_DIR: dir });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const labFile = () => ({
    ...base,
    azure: { ...azureBase, blobConnectionStringFile: 'secrets/blob', helpers: { westeurope: { vmName: 'helper', idleTimeoutSeconds: 5 } } },
  });

  it('without a config file, loads the lab file: lab test switches and env knobs on, the connection string read from its file', () => {
    withLabDir((dir, env) => {
      assert.throws(() => loadAppConfig(env), /no vmrestore\.config\.json .* the local lab is not running: run `vmrestore lab up`/);
      const secrets = path.join(dir, 'secrets');
      mkdirSync(secrets);
      writeFileSync(path.join(secrets, 'blob'), 'UseDevelopmentStorage=true\n');
      writeFileSync(labConfigPath(env), JSON.stringify(labFile()));
      const cfg = loadAppConfig({ ...env, VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1', VMRESTORE_LAB_HELPER_WORKER: 'separate' });
      assert.equal(cfg.fromLab, true);
      assert.equal(cfg.source, path.join(dir, 'vmrestore.config.json'));
      assert.equal(cfg.azure!.allowTestSwitches, true);
      assert.equal(cfg.azure!.blobConnectionString, 'UseDevelopmentStorage=true');
      assert.deepEqual(
        { idle: cfg.azure!.helpers.westeurope.idleTimeoutSeconds, embedded: cfg.azure!.helpers.westeurope.embeddedWorker },
        { idle: 1, embedded: false },
      );
      assert.throws(
        () => loadAppConfig({ ...env, VMRESTORE_AZURE_HELPER_IDLE_SECONDS: 'soon' }),
        /config VMRESTORE_AZURE_HELPER_IDLE_SECONDS: expected a whole number of seconds, got 'soon'/,
      );

      // The same file named by VMRESTORE_CONFIG is a config like any other: no test switches, no lab knobs.
      const named = loadAppConfig({ VMRESTORE_CONFIG: labConfigPath(env), VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '1' });
      assert.equal(named.fromLab, false);
      assert.equal(named.azure!.allowTestSwitches, undefined);
      assert.equal(named.azure!.helpers.westeurope.idleTimeoutSeconds, 5);
    });
  });

  it('names an unreadable connection string file, and refuses it beside blobConnectionStringEnv', () => {
    assert.throws(
      () => parseConfig({ ...base, azure: { ...azureBase, blobConnectionStringFile: 'nope' } }, 't', '/nonexistent'),
      /config azure\.blobConnectionStringFile: cannot read '\/nonexistent\/nope'/,
    );
    assert.throws(
      () => parseConfig({ ...base, azure: { ...azureBase, blobConnectionStringFile: 'a', blobConnectionStringEnv: 'B' } }, 't', '/'),
      /config azure\.blobConnectionStringFile: give either blobConnectionStringEnv or blobConnectionStringFile, not both/,
    );
  });
});
