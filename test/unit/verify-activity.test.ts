import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { staticNetwork, trimReport } from '../../src/activities/verify';
import { copyToSparseFile } from '../../src/sparse-file';
import { validateVerifyFields } from '../../src/domain/verification';
import { validateAzureRestoreRequest, validateVSphereRestoreRequest } from '../../src/domain/validation';
import { DISK_FORMATS, TRANSPORT_REQUESTS } from '../../src/domain/vsphere';
import { resolveNetwork, type BootReport } from '../../src/verify';

const MiB = 1024 * 1024;
let dir: string;

before(async () => {
  dir = await fsp.mkdtemp(path.join(os.tmpdir(), 'verify-activity-'));
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

describe('local copies of restored disks', () => {
  it('hold the same bytes and leave 64 KiB zero runs as holes, whatever the chunking of the stream', async () => {
    const size = 8 * MiB;
    const data = Buffer.alloc(size);
    randomBytes(MiB).copy(data, 0);
    randomBytes(100).copy(data, 5 * MiB + 7);
    data[size - 1] = 1;
    // Odd-sized chunks across the 1 MiB buffer boundaries.
    const chunks: Buffer[] = [];
    for (let at = 0; at < size; at += 333_333) chunks.push(data.subarray(at, Math.min(size, at + 333_333)));
    const file = path.join(dir, 'copy.raw');
    let seen = 0;
    const n = await copyToSparseFile(Readable.from(chunks), file, size, (b) => (seen += b));
    assert.equal(n, size);
    assert.equal(seen, size);
    assert.deepEqual(await fsp.readFile(file), data);
    const st = await fsp.stat(file);
    assert.equal(st.size, size);
    // 1 MiB + one 64 KiB block around the 100 bytes + the last block, in 512-byte units.
    assert.ok(st.blocks * 512 <= MiB + 3 * 64 * 1024, `allocated ${st.blocks * 512} bytes`);
  });

  it('refuse a stream shorter than the disk, naming the file', async () => {
    await assert.rejects(
      copyToSparseFile(Readable.from([Buffer.alloc(1000)]), path.join(dir, 'short.raw'), 4096),
      /read 1000 bytes for short\.raw, expected 4096/,
    );
  });
});

describe('the isolated network of a guest with a static address', () => {
  it('is its own subnet with qemu at its gateway and a DHCP range that avoids both', () => {
    const n = staticNetwork({ address: '192.168.50.20', prefixLength: 24, gateway: '192.168.50.1' });
    assert.deepEqual(n, { subnet: '192.168.50.0/24', host: '192.168.50.1', guestAddress: '192.168.50.20', dhcpStart: '192.168.50.100' });
    assert.equal(resolveNetwork(n).guestAddress, '192.168.50.20');
    assert.equal(staticNetwork({ address: '10.1.2.130', prefixLength: 25 }).host, '10.1.2.129');
    assert.throws(() => staticNetwork({ address: '10.0.0.1', gateway: '10.0.0.1' }), /gateway 10\.0\.0\.1 is the guest's own address/);
  });
});

describe('verification fields of a restore request', () => {
  const base = { restorePointId: 'rp-1', vmName: 'web01' };
  it('are checked by both request validators, each problem naming its field', () => {
    validateVSphereRestoreRequest(
      { ...base, verify: true, verifyNetwork: { address: '192.168.50.20', prefixLength: 24 } },
      TRANSPORT_REQUESTS,
      DISK_FORMATS,
    );
    validateAzureRestoreRequest({ ...base, verify: true, keepOnVerifyFailure: true, verifyTimeoutSeconds: 300 });
    assert.throws(() => validateAzureRestoreRequest({ ...base, verify: 'yes' }), /request field verify: expected true or false/);
    assert.throws(
      () => validateVerifyFields({ verifyTimeoutSeconds: 5 }),
      /verifyTimeoutSeconds: expected a whole number of seconds from 10 to 3600/,
    );
    assert.throws(
      () => validateVerifyFields({ verifyNetwork: { address: '192.168.50.300' } }),
      /verifyNetwork\.address: expected an IPv4 address/,
    );
    assert.throws(() => validateVerifyFields({ verifyNetwork: { address: '10.0.0.5', prefixLength: 31 } }), /verifyNetwork\.prefixLength/);
    assert.throws(() => validateVerifyFields({ verifyNetwork: { address: '10.0.0.5', gateway: 'router' } }), /verifyNetwork\.gateway/);
  });
});

describe('the report a restore result carries', () => {
  const boot: BootReport = {
    name: 'x',
    verdict: 'failed',
    checks: [{ name: 'sshBanner', status: 'failed', required: true, detail: 'no SSH banner' }],
    sshForward: { host: '127.0.0.1', port: 1, guestAddress: '10.0.2.15', guestPort: 22 },
    firmware: 'bios',
    accelerator: 'tcg',
    durationMs: 12_345,
    stoppedBy: 'time-limit',
    traffic: { framesFromGuest: 0, dhcp: [], guestAddresses: [] },
    files: { workDir: '/tmp/w', serialLog: '/tmp/w/s', firmwareLog: '/tmp/w/f', pcap: '/tmp/w/p' },
    serialTail: 'Booting\npassword: hunter2\n-----BEGIN OPENSSH PRIVATE KEY-----\nlogin:',
    qemuCommand: ['qemu-system-x86_64', '-drive', 'file=/secret/path'],
  };
  const extra = {
    disks: [],
    nic: { model: 'virtio-net-pci', mac: '00:50:56:00:00:01', macFrom: 'test' },
    network: { subnet: '10.0.2.0/24', guestAddress: '10.0.2.15', dhcp: true },
    readSeconds: 1,
  };
  it('keeps checks and times, drops files and the command line, and credential-looking serial lines', () => {
    const t = trimReport(boot, extra);
    assert.equal(t.bootSeconds, 12.3);
    assert.equal(t.serialTail, 'Booting\nlogin:');
    const json = JSON.stringify(t);
    for (const gone of ['qemuCommand', '/tmp/w', 'hunter2', 'PRIVATE KEY', 'sshForward']) assert.ok(!json.includes(gone), gone);
  });
  it('carries no serial log when passed', () => {
    assert.equal(trimReport({ ...boot, verdict: 'passed' }, extra).serialTail, undefined);
  });
});
