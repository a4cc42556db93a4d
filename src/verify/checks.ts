import { type GuestTraffic } from './pcap';
import type { ResolvedNetwork } from './network';
import type { BootCheck, BootReport, BootRequest } from './report';

// The checks of a boot and how their verdicts are decided from what was seen outside the guest.

export const SSH_BANNER = /^SSH-(2\.0|1\.99)-/;
export const KERNEL_LINE =
  /Linux version \d|\[\s*\d+\.\d{6}\]|login:|Welcome to .*(Debian|Linux)|systemd\[1\]|Reached target|Started .*\.service/;
export const EMERGENCY = [
  /You are in emergency mode/,
  /You are in rescue mode/,
  /Give root password for maintenance/,
  /Cannot open access to console, the root account is locked/,
  /Dropping to a shell!/,
  /Gave up waiting for root file system device/,
  /\(initramfs\) ?$/m,
  /Kernel panic - not syncing/,
];

export interface Observed {
  bootLoaderMs?: number;
  bootLoaderDetail?: string;
  bootLoaderFailure?: string;
  kernelMs?: number;
  kernelDetail?: string;
  serialMs?: number;
  serialLine?: string;
  emergencyMs?: number;
  emergencyLine?: string;
  bannerMs?: number;
  banner?: string;
  /** The last line the SSH port sent that was not a banner. */
  lastNonBanner?: string;
  dhcpMs?: number;
  dhcpAddress?: string;
}

export function decide(
  req: BootRequest,
  seen: Observed,
  traffic: GuestTraffic,
  n: ResolvedNetwork,
  timeoutMs: number,
  stoppedBy: BootReport['stoppedBy'],
  qemuOutput: string | undefined,
): BootCheck[] {
  const limit = `${Math.round(timeoutMs / 1000)} s`;
  const notReached =
    stoppedBy === 'qemu-exited'
      ? `qemu exited before this was seen${qemuOutput ? `: ${qemuOutput.trim().slice(-500)}` : ''}`
      : stoppedBy === 'aborted'
        ? 'the boot was aborted before this was seen'
        : stoppedBy === 'emergency-mode'
          ? 'not seen: the guest stopped in emergency mode'
          : `not seen within the time limit of ${limit}`;
  const expectDhcp = req.expect?.dhcp ?? true;
  const expectSerial = req.expect?.serialConsole ?? true;
  const checks: BootCheck[] = [];

  if (seen.bootLoaderMs !== undefined) {
    checks.push({ name: 'bootLoader', status: 'passed', required: true, elapsedMs: seen.bootLoaderMs, detail: seen.bootLoaderDetail! });
  } else if (seen.kernelMs !== undefined) {
    checks.push({
      name: 'bootLoader',
      status: 'passed',
      required: true,
      elapsedMs: seen.kernelMs,
      detail: 'inferred: a kernel started, so a boot loader ran',
    });
  } else {
    checks.push({
      name: 'bootLoader',
      status: 'failed',
      required: true,
      detail: seen.bootLoaderFailure ? `firmware: ${seen.bootLoaderFailure}` : notReached,
    });
  }

  checks.push(
    seen.kernelMs !== undefined
      ? { name: 'kernelStarted', status: 'passed', required: true, elapsedMs: seen.kernelMs, detail: seen.kernelDetail! }
      : { name: 'kernelStarted', status: 'failed', required: true, detail: notReached },
  );

  checks.push(
    seen.serialMs !== undefined
      ? {
          name: 'serialConsole',
          status: 'passed',
          required: expectSerial,
          elapsedMs: seen.serialMs,
          detail: `guest output on ttyS0: "${seen.serialLine}"`,
        }
      : {
          name: 'serialConsole',
          status: 'failed',
          required: expectSerial,
          detail:
            'no output from the guest on the serial console (ttyS0): the kernel line has no console=ttyS0 or the guest did not get that far',
        },
  );

  const fromGuest = traffic.dhcp.filter(
    (d) => d.clientMac === req.nic.mac.toLowerCase() && (d.type === 'discover' || d.type === 'request'),
  );
  if (seen.dhcpMs !== undefined) {
    checks.push({
      name: 'dhcpLease',
      status: 'passed',
      required: expectDhcp,
      elapsedMs: seen.dhcpMs,
      detail: `DHCPACK for ${seen.dhcpAddress} from ${n.host}`,
    });
  } else {
    const spoke = traffic.guestAddresses.length > 0 ? `; the guest sent from ${traffic.guestAddresses.join(', ')}` : '';
    const detail =
      traffic.framesFromGuest === 0
        ? 'no frame from the guest on its NIC: the NIC was never brought up'
        : fromGuest.length === 0
          ? `the guest sent ${traffic.framesFromGuest} frames but no DHCP request${spoke}`
          : `the guest asked (${fromGuest.map((d) => d.type).join(', ')}) but no lease was acknowledged${spoke}`;
    checks.push({ name: 'dhcpLease', status: 'failed', required: expectDhcp, detail });
  }

  checks.push(
    seen.bannerMs !== undefined
      ? {
          name: 'sshBanner',
          status: 'passed',
          required: true,
          elapsedMs: seen.bannerMs,
          detail: `"${seen.banner}" from ${n.guestAddress}:${req.sshPort ?? 22}`,
        }
      : {
          name: 'sshBanner',
          status: 'failed',
          required: true,
          detail: `no SSH banner from ${n.guestAddress}:${req.sshPort ?? 22}: ${notReached}${seen.lastNonBanner ? ` (it answered "${seen.lastNonBanner}")` : ''}`,
        },
  );

  if (seen.emergencyMs !== undefined) {
    checks.push({
      name: 'noEmergencyMode',
      status: 'failed',
      required: true,
      elapsedMs: seen.emergencyMs,
      detail: `serial console: "${seen.emergencyLine}"`,
    });
  } else if (seen.bannerMs !== undefined) {
    checks.push({
      name: 'noEmergencyMode',
      status: 'passed',
      required: true,
      elapsedMs: seen.bannerMs,
      detail: 'sshd answered, so the guest reached its normal target',
    });
  } else {
    checks.push({
      name: 'noEmergencyMode',
      status: 'unknown',
      required: true,
      detail:
        seen.serialMs !== undefined
          ? 'no emergency or rescue prompt on the serial console, but no SSH either'
          : 'cannot tell: no serial console output and no SSH banner',
    });
  }
  return checks;
}
