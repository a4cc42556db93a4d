import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { applyLabEnvOverrides, parseConfig } from '../../src/config';
import { chooseProxy, whyNoProxy, type ProxyStatus } from '../../src/domain/proxy-slots';
import { proxyTaskQueue } from '../../src/domain/task-queues';
import type { ProxyCandidate } from '../../src/domain/vsphere';
import { checkProxyHost } from '../../src/worker';

const candidate = (name: string, transports: ProxyCandidate['transports'], maxTasks = 2): ProxyCandidate => ({
  name,
  transports,
  maxTasks,
});
const status = (name: string, inUse: number, live = true): ProxyStatus => ({ name, live, inUse, pollers: live ? [`1@h/${name}`] : [] });
const byName = (...list: ProxyStatus[]) => Object.fromEntries(list.map((s) => [s.name, s]));

const profiles = { vsphere: { profiles: { prod: { url: 'https://vc.example.com/sdk', username: 'u', passwordEnv: 'VC_PASS' } } } };

describe('proxy choice', () => {
  const san = candidate('san01', ['direct-san', 'nbd']);
  const nbdA = candidate('nbd01', ['nbd']);
  const nbdB = candidate('nbd02', ['nbd']);

  it('takes the best transport among live proxies with a free slot', () => {
    assert.equal(chooseProxy([nbdA, san], byName(status('nbd01', 0), status('san01', 1)))?.name, 'san01');
  });

  it('passes over a proxy whose worker is not live, and one whose slots are all taken', () => {
    assert.equal(chooseProxy([san, nbdA], byName(status('san01', 0, false), status('nbd01', 1)))?.name, 'nbd01');
    assert.equal(chooseProxy([san, nbdA], byName(status('san01', 2), status('nbd01', 1)))?.name, 'nbd01');
  });

  it('spreads over proxies of the same transport: the least loaded first, then an order rotated per disk', () => {
    assert.equal(chooseProxy([nbdA, nbdB], byName(status('nbd01', 0), status('nbd02', 0)))?.name, 'nbd01');
    // Restores that look at the same moment see the same loads; their disks' names send them apart.
    const picks = new Set(
      Array.from(
        { length: 8 },
        (_, i) => chooseProxy([nbdA, nbdB], byName(status('nbd01', 0), status('nbd02', 0)), `restore-${i}/disk0`)?.name,
      ),
    );
    assert.deepEqual([...picks].sort(), ['nbd01', 'nbd02']);
    assert.equal(
      chooseProxy([nbdA, nbdB], byName(status('nbd01', 1), status('nbd02', 0)), 'any')?.name,
      'nbd02',
      'load before the rotation',
    );
    assert.equal(chooseProxy([nbdA, nbdB], byName(status('nbd01', 1), status('nbd02', 0)))?.name, 'nbd02');
    const big = candidate('nbd03', ['nbd'], 8);
    assert.equal(chooseProxy([nbdA, big], byName(status('nbd01', 1), status('nbd03', 3)))?.name, 'nbd03', '3/8 is less loaded than 1/2');
  });

  it('chooses none when no proxy is live or every live one is full, and says which', () => {
    const none = byName(status('nbd01', 0, false), status('nbd02', 0, false));
    assert.equal(chooseProxy([nbdA, nbdB], none), undefined);
    assert.deepEqual(whyNoProxy([nbdA, nbdB], none), { live: false, text: "no worker polls the task queue of proxy 'nbd01', 'nbd02'" });
    const full = byName(status('nbd01', 2), status('nbd02', 0, false));
    assert.equal(chooseProxy([nbdA, nbdB], full), undefined);
    assert.deepEqual(whyNoProxy([nbdA, nbdB], full), { live: true, text: 'every live proxy is busy (nbd01 2/2 tasks)' });
  });

  it('names each proxy a queue of its own under the main queue', () => {
    assert.equal(proxyTaskQueue('vmrestore', 'proxy01'), 'vmrestore-proxy-proxy01');
  });
});

describe('proxy configuration', () => {
  it('defaults maxTasks to 4 and embeddedWorker to false', () => {
    const cfg = parseConfig({ ...profiles, proxies: [{ name: 'p1' }] }, 't', '/');
    assert.equal(cfg.proxies[0].maxTasks, 4);
    assert.equal(cfg.proxies[0].embeddedWorker, false);
    assert.equal(cfg.restore.proxyWaitSeconds, 1800);
  });

  it('refuses a bad maxTasks, a name unfit for a task queue and a name given twice', () => {
    assert.throws(() => parseConfig({ ...profiles, proxies: [{ name: 'p1', maxTasks: 0 }] }, 't', '/'), /proxies\[0\]\.maxTasks/);
    assert.throws(() => parseConfig({ ...profiles, proxies: [{ name: 'p 1' }] }, 't', '/'), /proxies\[0\]\.name: 'p 1'/);
    assert.throws(
      () => parseConfig({ ...profiles, proxies: [{ name: 'p1' }, { name: 'p1' }] }, 't', '/'),
      /proxy name 'p1' is given twice/,
    );
  });

  it("a proxy's worker refuses to start when a configured path does not exist on its host, naming it", () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-proxy-'));
    try {
      const missing = path.join(dir, 'no-such-mount');
      const cfg = parseConfig(
        {
          ...profiles,
          proxies: [{ name: 'p1', transports: ['direct-nas', 'hotadd'], nasMounts: { DS1: dir }, hotaddDevices: { DS1: missing } }],
        },
        't',
        '/',
      );
      assert.throws(
        () => checkProxyHost(cfg, 'p1'),
        (err: Error) => err.message === `proxy 'p1': proxies[0].hotaddDevices.DS1 is '${missing}', which does not exist on this host`,
      );
      assert.throws(() => checkProxyHost(cfg, 'p2'), /no vSphere proxy named 'p2' is configured \(known: p1\)/);
      const ok = parseConfig({ ...profiles, proxies: [{ name: 'p1', transports: ['direct-nas'], nasMounts: { DS1: dir } }] }, 't', '/');
      assert.equal(checkProxyHost(ok, 'p1').name, 'p1');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the lab's proxy is served by the lab worker unless VMRESTORE_LAB_PROXY_WORKER=separate", () => {
    const lab = parseConfig({ ...profiles, proxies: [{ name: 'lab-proxy', embeddedWorker: true }] }, 't', '/', { fromLab: true });
    assert.equal(applyLabEnvOverrides(lab, {}).proxies[0].embeddedWorker, true);
    assert.equal(applyLabEnvOverrides(lab, { VMRESTORE_LAB_PROXY_WORKER: 'separate' }).proxies[0].embeddedWorker, false);
  });
});
