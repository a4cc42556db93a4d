import { type GuestTraffic } from './pcap';
import { type BootFirmware, type NicModel, type QemuDisk, type ScsiController } from './qemu';

// What a boot verification is asked to do and what it reports.

export type BootCheckName = 'bootLoader' | 'kernelStarted' | 'serialConsole' | 'dhcpLease' | 'sshBanner' | 'noEmergencyMode';
export type BootCheckStatus = 'passed' | 'failed' | 'unknown';

export interface BootCheck {
  name: BootCheckName;
  status: BootCheckStatus;
  /** A failed required check fails the verification; the others are reported only. */
  required: boolean;
  /** Since qemu started, when the check passed (or when it was found failed). */
  elapsedMs?: number;
  detail: string;
}

export interface BootDisk {
  path: string;
  /** Default raw. */
  format?: QemuDisk['format'];
  /** What the disk is to the target (`os`, `resource`, `data`), for the report. */
  role?: string;
}

export interface BootNetwork {
  /** User-mode network, `a.b.c.d/N` (default qemu's 10.0.2.0/24). */
  subnet?: string;
  /** qemu's own address on it, the guest's gateway (default .2 of the subnet, as qemu does). */
  host?: string;
  /** First address its DHCP server hands out (default .15). */
  dhcpStart?: string;
  /** Where the SSH port forward goes: the guest's static address, or by default the first DHCP address. */
  guestAddress?: string;
}

export interface BootRequest {
  /** Names the boot in the report and the log directory. */
  name: string;
  firmware: BootFirmware;
  /** In the target's order: the first disk is the boot disk (SCSI target 0), then 1, 2, ... */
  disks: BootDisk[];
  scsiController?: ScsiController;
  nic: { model?: NicModel; mac: string };
  network?: BootNetwork;
  /** Which checks must pass: DHCP (default true) and a serial console (default true, Azure needs ttyS0). */
  expect?: { dhcp?: boolean; serialConsole?: boolean };
  /** Guest's SSH port (default 22). */
  sshPort?: number;
  cpus?: number;
  memoryMiB?: number;
  /** The whole boot's time limit (default 300 s): a check not passed by then fails. */
  timeoutMs?: number;
  /** Directory for the serial log, firmware log and pcap (kept); default a new temporary directory. */
  workDir?: string;
  /**
   * Runs once the SSH banner answered, while the VM is still up (within the time limit), e.g. to log in
   * and look around; its error, if any, is reported as `whileUpError` and fails the verdict.
   */
  whileUp?: (ssh: { host: string; port: number }) => Promise<void>;
  signal?: AbortSignal;
}

export interface BootReport {
  name: string;
  verdict: 'passed' | 'failed';
  /** Time from qemu's start to the SSH banner: the measured recovery time. */
  recoveryTimeMs?: number;
  checks: BootCheck[];
  sshBanner?: string;
  /** The SSH port forward on the host, 127.0.0.1:PORT. */
  sshForward: { host: string; port: number; guestAddress: string; guestPort: number };
  firmware: BootFirmware;
  accelerator: 'tcg';
  durationMs: number;
  /** Why the boot stopped: `ssh-banner`, `emergency-mode`, `time-limit`, `qemu-exited`, `aborted`. */
  stoppedBy: 'ssh-banner' | 'emergency-mode' | 'time-limit' | 'qemu-exited' | 'aborted';
  traffic: GuestTraffic;
  files: { workDir: string; serialLog: string; firmwareLog: string; pcap: string };
  /** The error of the `whileUp` callback. */
  whileUpError?: string;
  /** The last lines of the serial log when the verdict is failed. */
  serialTail?: string;
  qemuCommand: string[];
}
