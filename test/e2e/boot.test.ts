import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { ensureGuestImage, type GuestImage } from '../../src/lab/guests';
import { verifyBoot, type BootCheckName, type BootReport, type BootRequest } from '../../src/verify';
import { bootCheck, explainBoot, sshIntoGuest } from '../helpers/lab-guests';

/**
 * A real boot of the lab's UEFI Debian 12 guest under qemu (TCG) as it was on VMware: a static address
 * on the VMware NIC name, pinned to its MAC by a persistent-net rule, and no serial console; a login then
 * checks it from inside. The BIOS guest as it was is booted from its restored bytes by the vSphere case
 * of test/e2e/verify-restore.test.ts. The negative control of these checks (the BIOS guest on a foreign
 * MAC and a DHCP-only network: no lease, no SSH) is in test/e2e/azure-boot.test.ts.
 */

const BUILD_TIMEOUT = 30 * 60_000;
/** Under TCG a boot takes 1-3 min on a 2-core machine, up to ten when other work shares the cores. */
const BOOT_LIMIT_MS = 900_000;
const TEST_TIMEOUT = BOOT_LIMIT_MS + 120_000;

let dir: string;
let uefi: GuestImage;

before(
  async () => {
    dir = await fsp.mkdtemp(join(tmpdir(), 'boot-e2e-'));
    uefi = (await ensureGuestImage('debian12-uefi')).image;
  },
  { timeout: BUILD_TIMEOUT },
);

after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

const check = bootCheck;
const explain = explainBoot;

/** The verification lab presenting the VM as it was on VMware: its disks in order, its NIC's MAC, its own subnet. */
function asItWas(image: GuestImage, name: string): BootRequest {
  return {
    name,
    firmware: image.firmware,
    disks: [
      { path: image.osDisk, role: 'os' },
      { path: image.dataDisk, role: 'data' },
    ],
    nic: { model: 'virtio-net-pci', mac: image.network.mac },
    network: { subnet: image.network.subnet, host: image.network.gateway, guestAddress: image.network.address },
    expect: { dhcp: false, serialConsole: false },
    timeoutMs: BOOT_LIMIT_MS,
    workDir: join(dir, name),
  };
}

/** Logs in with the guest's test key, trusting only the host keys the build recorded. */
function sshInto(image: GuestImage, port: number, command: string): Promise<string> {
  return sshIntoGuest(image, port, command, dir);
}

const GUEST_STATE = [
  'cat /sys/class/net/$NIC/address',
  'ip -4 -o addr show dev $NIC',
  'findmnt -n -o SOURCE /srv/data',
  'cat /srv/data/DISK-IDENTITY',
  'findmnt -n -o UUID /srv/data',
  'systemctl is-system-running || true',
]
  .map((c) => `${c} 2>&1`)
  .join('; ');

async function bootAsItWas(t: TestContext, image: GuestImage, firmwareName: string): Promise<BootReport> {
  let inside = '';
  const report = await verifyBoot({
    ...asItWas(image, `${image.name}-as-it-was`),
    whileUp: async ({ port }) => {
      inside = await sshInto(image, port, GUEST_STATE.replace(/\$NIC/g, image.network.nicName));
    },
  });
  t.diagnostic(`${image.name} under ${firmwareName} (TCG): SSH banner after ${((report.recoveryTimeMs ?? NaN) / 1000).toFixed(1)} s`);
  assert.equal(report.verdict, 'passed', explain(report));
  for (const name of ['bootLoader', 'kernelStarted', 'sshBanner', 'noEmergencyMode'] as const) {
    assert.equal(check(report, name).status, 'passed', `${name}: ${explain(report)}`);
  }
  const times = ['bootLoader', 'kernelStarted', 'sshBanner'].map((n) => check(report, n as BootCheckName).elapsedMs!);
  assert.ok(times[0] <= times[1] && times[1] <= times[2], `checks out of order: ${times.join(' > ')}`);
  assert.equal(report.recoveryTimeMs, check(report, 'sshBanner').elapsedMs);
  assert.match(report.sshBanner ?? '', /^SSH-2\.0-OpenSSH/);
  // The guest has no console=ttyS0: reported missing, not required here.
  const serial = check(report, 'serialConsole');
  assert.equal(serial.status, 'failed');
  assert.equal(serial.required, false);
  // Static address: the wire shows the guest speaking from it, and no DHCP.
  assert.deepEqual(report.traffic.guestAddresses, [image.network.address]);
  assert.equal(check(report, 'dhcpLease').status, 'failed');
  assert.equal(report.whileUpError, undefined);
  // Logged in through the forward with the recorded host key: the NIC kept its VMware name and address,
  // and the second disk was mounted where fstab says.
  const lines = inside.trim().split('\n');
  t.diagnostic(`inside ${image.name}: ${lines.join(' | ')}`);
  assert.equal(lines[0], image.network.mac);
  assert.match(lines[1], new RegExp(`inet ${image.network.address.replace(/\./g, '\\.')}/${image.network.prefixLength}`));
  // fstab by UUID (as Debian's installer writes it): the data disk, whichever name the kernel gave it.
  assert.equal(image.fstabNames, 'uuid');
  assert.match(lines[2], /^\/dev\/sd[ab]1$/);
  assert.equal(lines[4], image.dataPartition.fsUuid);
  assert.equal(lines[3], `data disk of ${image.hostname}`);
  return report;
}

describe('a lab guest boots in the verification lab as it was on VMware', () => {
  it('the UEFI guest boots under OVMF and answers SSH on its static address (systemd-networkd)', { timeout: TEST_TIMEOUT }, async (t) => {
    const report = await bootAsItWas(t, uefi, 'OVMF');
    assert.match(check(report, 'bootLoader').detail, /OVMF/);
  });
});
