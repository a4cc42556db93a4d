import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { requestFingerprint } from '../../src/domain/plan';
import { DISK_FORMATS, TRANSPORT_REQUESTS } from '../../src/domain/vsphere';
import { validateAzureRestoreRequest, validateVSphereRestoreRequest } from '../../src/domain/validation';
import { parsePlan, PlanFileError } from '../../src/cli/plan-file';

const GOOD = `name: dr-drill
limits:
  restoresPerPlan: 3
  disksPerDatastore: 1
  uploadsPerStorageAccount: 2
defaults:
  vsphere:
    datastore: LocalDS_0
    transport: nbd
groups:
  - name: db
    gate: verified
    vms:
      - target: vsphere
        restorePointId: rp-1
        vmName: db01
        verify: true
        networkMap:
          VM Network: DC0_DVPG0
  - name: app
    delay: 5m
    gate: approval
    vms:
      - target: azure
        restorePointId: rp-2
        vmName: app01
        resourceGroup: rg1
      - restorePointId: rp-3
        vmName: app02
        transport: hotadd
  - name: web
    vms:
      - { target: vsphere, restorePointId: rp-4, vmName: web01 }
`;

/** The problems a plan text has, as "line: path: message". */
function problems(text: string): string[] {
  try {
    parsePlan(text, 'p.yaml');
  } catch (err) {
    assert.ok(err instanceof PlanFileError, `expected a PlanFileError, got ${String(err)}`);
    return err.problems.map((p) => `${p.line}: ${p.path}${p.path ? ': ' : ''}${p.message}`);
  }
  assert.fail('the plan was accepted');
}

/** GOOD with one line replaced (1-based). */
function withLine(line: number, text: string): string {
  const lines = GOOD.split('\n');
  lines[line - 1] = text;
  return lines.join('\n');
}

describe('plan file', () => {
  it('a good plan gives groups in order, each VM a full restore request with the commands’ defaults and the plan’s defaults', () => {
    const plan = parsePlan(GOOD);
    assert.equal(plan.name, 'dr-drill');
    assert.deepEqual(plan.limits, { restoresPerPlan: 3, disksPerDatastore: 1, uploadsPerStorageAccount: 2 });
    assert.deepEqual(
      plan.groups.map((g) => [g.name, g.gate, g.delaySeconds, g.vms.map((v) => `${v.target}:${v.vmName}`)]),
      [
        ['db', 'verified', undefined, ['vsphere:db01']],
        ['app', 'approval', 300, ['azure:app01', 'vsphere:app02']],
        ['web', undefined, undefined, ['vsphere:web01']],
      ],
    );
    assert.deepEqual(plan.groups[0].vms[0], {
      target: 'vsphere',
      transport: 'nbd',
      diskFormat: 'same',
      powerOn: false,
      keepOnFailure: false,
      datastore: 'LocalDS_0',
      restorePointId: 'rp-1',
      vmName: 'db01',
      verify: true,
      keepOnVerifyFailure: false,
      networkMap: { 'VM Network': 'DC0_DVPG0' },
    });
    assert.deepEqual(plan.groups[1].vms[0], {
      target: 'azure',
      keepOnFailure: false,
      restorePointId: 'rp-2',
      vmName: 'app01',
      resourceGroup: 'rg1',
    });
    assert.equal((plan.groups[1].vms[1] as { transport?: string }).transport, 'hotadd', 'a VM’s own field wins over the defaults');
  });

  it('a field the request validator refuses is reported at its line with its key path', () => {
    assert.deepEqual(problems(withLine(19, '          VM Network: 7')), [
      '19: groups[0].vms[0].networkMap["VM Network"]: target network 7 is not a valid network name',
    ]);
    assert.deepEqual(problems(withLine(26, '        vmName: app_01-')), [
      "26: groups[1].vms[0].vmName: Azure VM name 'app_01-' is invalid: it must not end with '.' or '-'",
    ]);
  });

  it('a bad default is reported at the default’s line, not at the VM', () => {
    assert.deepEqual(problems(withLine(9, '    transport: fast')), [
      '9: defaults.vsphere.transport: "fast" is not one of auto, direct-san, direct-nas, hotadd, nbd',
    ]);
  });

  it('unknown keys, bad limits, gates and delays are each reported, all at once, in line order', () => {
    const text = GOOD.replace('  disksPerDatastore: 1', '  disksPerDatastore: 0')
      .replace('    gate: approval', '    gate: manual')
      .replace('    delay: 5m', '    delay: soon')
      .replace('        resourceGroup: rg1', '        resourcGroup: rg1');
    assert.deepEqual(problems(text), [
      '4: limits.disksPerDatastore: expected a whole number from 1 to 1000, got 0',
      '21: groups[1].delay: expected seconds (30) or a duration (30s, 5m, 1h) up to 24h, got "soon"',
      '22: groups[1].gate: "manual" is not one of verified, approval',
      '27: groups[1].vms[0].resourcGroup: unknown key (known: restorePointId, vmName, resourceGroup, location, vmSize, subnetId, generation, proxy, keepOnFailure, skipGuestPreparation, verify, verifyTimeoutSeconds, keepOnVerifyFailure, target)',
    ]);
  });

  it('a verified gate needs verify on every VM of its group', () => {
    assert.deepEqual(problems(withLine(17, '        verify: false')), [
      "14: groups[0].vms[0]: group 'db' has gate: verified, so every VM of it needs verify: true",
    ]);
  });

  it('the same VM twice, a missing name or groups, and YAML syntax errors name their line', () => {
    assert.deepEqual(problems(GOOD.replace('vmName: web01', 'vmName: app02')), [
      "33: groups[2].vms[0].vmName: vsphere VM 'app02' is already restored by groups[1].vms[1]",
    ]);
    assert.deepEqual(problems('groups: []\n'), [
      "1: name is required (1-63 letters, digits, '.', '_' and '-', starting with a letter or digit)",
      '1: groups: expected a list of at least one group',
    ]);
    const syntax = problems('name: x\ngroups:\n  - name: a\n    vms: [ {vmName: a\n');
    assert.equal(syntax.length >= 1, true);
    assert.match(syntax[0], /^\d+: /);
    assert.deepEqual(problems('name: x\nname: y\ngroups: []\n').slice(0, 1), ['2: Map keys must be unique']);
  });

  it('a request fingerprint ignores key order and changes with any field', () => {
    const a = parsePlan(GOOD).groups[0].vms[0];
    const reordered = Object.fromEntries(Object.entries(a).reverse()) as typeof a;
    assert.equal(requestFingerprint(reordered), requestFingerprint(a));
    assert.notEqual(requestFingerprint({ ...a, restorePointId: 'rp-9' }), requestFingerprint(a));
  });

  it('a restore request’s limits are checked by the request validators, per target', () => {
    const vsphere = { restorePointId: 'rp-1', vmName: 'a', limits: { disksPerDatastore: 2 } };
    validateVSphereRestoreRequest(vsphere, TRANSPORT_REQUESTS, DISK_FORMATS);
    assert.throws(
      () => validateVSphereRestoreRequest({ ...vsphere, limits: { disksPerHost: 0 } }, TRANSPORT_REQUESTS, DISK_FORMATS),
      /request field limits\.disksPerHost: expected a whole number from 1 to 1000, got 0/,
    );
    assert.throws(
      () => validateVSphereRestoreRequest({ ...vsphere, limits: { uploadsPerStorageAccount: 2 } }, TRANSPORT_REQUESTS, DISK_FORMATS),
      /request field limits\.uploadsPerStorageAccount: is not a limit of this target \(known: disksPerHost, disksPerDatastore\)/,
    );
    validateAzureRestoreRequest({ restorePointId: 'rp-1', vmName: 'a', limits: { restoresPerRegion: 3 } });
    assert.throws(
      () => validateAzureRestoreRequest({ restorePointId: 'rp-1', vmName: 'a', limits: 3 }),
      /request field limits: expected an object/,
    );
  });
});
