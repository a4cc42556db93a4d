import { FailureType, RestoreError } from './errors';

/**
 * Boot verification of a restore: the restored disks, read back from the target, booted in an isolated
 * emulator. What a request asks for, and what its result and search attribute say.
 */

/** The search attribute `RestoreVerified`: `skipped` when the request did not ask for verification. */
export type VerificationStatus = 'passed' | 'failed' | 'skipped';

/** The guest's own static address, for a guest that does not use DHCP (a VMware guest, typically). */
export interface VerifyNetwork {
  /** The guest's IPv4 address, e.g. 192.168.50.20. */
  address: string;
  /** Prefix length of its subnet (default 24). */
  prefixLength?: number;
  /** Its default gateway (default the subnet's .1); the isolated network's host side answers there. */
  gateway?: string;
}

/** The request fields every restore takes for verification. */
export interface VerifyRequestFields {
  /** Boot the restored disks in the verification lab before the restore counts as done. */
  verify?: boolean;
  /** With `verify`: a guest with a static address is reached there, on its own subnet. */
  verifyNetwork?: VerifyNetwork;
  /** Time limit of the boot in seconds (default 600: minutes under software emulation). */
  verifyTimeoutSeconds?: number;
  /** A failed verification keeps the restored VM and completes the restore (RestoreVerified=failed). */
  keepOnVerifyFailure?: boolean;
}

export interface VerificationCheck {
  name: string;
  status: 'passed' | 'failed' | 'unknown';
  required: boolean;
  /** Since power-on. */
  elapsedMs?: number;
  detail: string;
}

/** What a restore result carries of a boot: checks and times, no files, no command lines, no secrets. */
export interface VerificationReport {
  verdict: 'passed' | 'failed';
  firmware: 'bios' | 'efi';
  accelerator: 'tcg';
  /** Time from power-on to the SSH banner: the measured recovery time. */
  recoveryTimeMs?: number;
  sshBanner?: string;
  stoppedBy: string;
  checks: VerificationCheck[];
  /** In the order the guest saw them (SCSI target 0, 1, ...). */
  disks: { role: 'os' | 'resource' | 'data'; source: string; bytes: number; bytesRead: number }[];
  nic: { model: string; mac: string; macFrom: string };
  network: { subnet: string; guestAddress: string; dhcp: boolean };
  /** Seconds spent reading the disks from the target before the boot. */
  readSeconds: number;
  bootSeconds: number;
  /** The serial console's last lines, only when the verdict is failed. */
  serialTail?: string;
  whileUpError?: string;
}

export interface RestoreVerification {
  status: VerificationStatus;
  report?: VerificationReport;
  /** A failed verification whose VM was kept (keepOnVerifyFailure). */
  kept?: boolean;
}

/** The task queue of the boot verification worker for the restores of `taskQueue`. */
export function verifierTaskQueue(taskQueue: string): string {
  return `${taskQueue}-verifier`;
}

/** Failure type of a restore failed by its boot verification; its details carry the RestoreVerification. */
export const VERIFICATION_FAILED = 'VerificationFailed';

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

function bad(field: string, why: string): never {
  throw new RestoreError(FailureType.InvalidRequest, `request field ${field}: ${why}`);
}

/** Shape and bounds of the verification fields of a restore request. */
export function validateVerifyFields(req: Record<string, unknown>): void {
  for (const f of ['verify', 'keepOnVerifyFailure']) {
    if (req[f] !== undefined && typeof req[f] !== 'boolean') bad(f, `expected true or false, got ${JSON.stringify(req[f])}`);
  }
  const t = req.verifyTimeoutSeconds;
  if (t !== undefined && (typeof t !== 'number' || !Number.isInteger(t) || t < 10 || t > 3600)) {
    bad('verifyTimeoutSeconds', `expected a whole number of seconds from 10 to 3600, got ${JSON.stringify(t)}`);
  }
  const n = req.verifyNetwork;
  if (n === undefined) return;
  if (typeof n !== 'object' || n === null || Array.isArray(n)) bad('verifyNetwork', `expected an object, got ${JSON.stringify(n)}`);
  const net = n as Record<string, unknown>;
  if (typeof net.address !== 'string' || !IPV4.test(net.address)) {
    bad('verifyNetwork.address', `expected an IPv4 address, got ${JSON.stringify(net.address)}`);
  }
  const p = net.prefixLength;
  if (p !== undefined && (typeof p !== 'number' || !Number.isInteger(p) || p < 8 || p > 30)) {
    bad('verifyNetwork.prefixLength', `expected a whole number from 8 to 30, got ${JSON.stringify(p)}`);
  }
  if (net.gateway !== undefined && (typeof net.gateway !== 'string' || !IPV4.test(net.gateway))) {
    bad('verifyNetwork.gateway', `expected an IPv4 address, got ${JSON.stringify(net.gateway)}`);
  }
}
