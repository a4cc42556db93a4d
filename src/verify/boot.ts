import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import { readGuestTraffic, type GuestTraffic } from './pcap';
import { findOvmf, qemuArgs, type BootFirmware, type NicModel, type QemuDisk, type ScsiController } from './qemu';
import { QmpClient } from './qmp';

/**
 * Boots a set of disk images in qemu, the way a target platform presents them, on an isolated user-mode
 * network, and reports what a restore's owner wants to know: did it come up, and how long did it take.
 * Evidence comes from outside the guest: the firmware's debug port, the vCPU's instruction pointer, the
 * serial port, the frames on the virtual wire and the SSH port, so no agent or console is assumed.
 */

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

const DEFAULT_TIMEOUT_MS = 300_000;
const POLL_MS = 500;
const PROBE_INTERVAL_MS = 2_000;
/** After the banner, a little longer for late serial output (a getty prompt) to land. */
const SETTLE_MS = 2_000;
const TAIL_LINES = 40;

const SSH_BANNER = /^SSH-(2\.0|1\.99)-/;
const KERNEL_LINE = /Linux version \d|\[\s*\d+\.\d{6}\]|login:|Welcome to .*(Debian|Linux)|systemd\[1\]|Reached target|Started .*\.service/;
const EMERGENCY = [
  /You are in emergency mode/,
  /You are in rescue mode/,
  /Give root password for maintenance/,
  /Cannot open access to console, the root account is locked/,
  /Dropping to a shell!/,
  /Gave up waiting for root file system device/,
  /\(initramfs\) ?$/m,
  /Kernel panic - not syncing/,
];

function ipToInt(ip: string): number {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) {
    throw new RestoreError(FailureType.InvalidRequest, `'${ip}' is not an IPv4 address`);
  }
  return parts.reduce((a, p) => a * 256 + p, 0);
}

function intToIp(n: number): string {
  return [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');
}

interface ResolvedNetwork {
  subnet: string;
  host: string;
  dhcpStart: string;
  guestAddress: string;
}

/** Fills in qemu's defaults and refuses addresses outside the subnet, naming them. */
export function resolveNetwork(n: BootNetwork = {}): ResolvedNetwork {
  const subnet = n.subnet ?? '10.0.2.0/24';
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(subnet);
  if (!m || Number(m[2]) < 8 || Number(m[2]) > 30) {
    throw new RestoreError(FailureType.InvalidRequest, `network.subnet '${subnet}' must be an IPv4 a.b.c.d/N with 8 <= N <= 30`);
  }
  const bits = Number(m[2]);
  const size = 2 ** (32 - bits);
  const base = ipToInt(m[1]) - (ipToInt(m[1]) % size);
  const inside = (label: string, ip: string) => {
    const v = ipToInt(ip);
    if (v <= base || v >= base + size - 1) {
      throw new RestoreError(FailureType.InvalidRequest, `network.${label} ${ip} is not a host address of ${subnet}`);
    }
    return ip;
  };
  const host = inside('host', n.host ?? intToIp(base + 2));
  const dhcpStart = inside('dhcpStart', n.dhcpStart ?? intToIp(base + 15));
  const guestAddress = inside('guestAddress', n.guestAddress ?? dhcpStart);
  return { subnet: `${intToIp(base)}/${bits}`, host, dhcpStart, guestAddress };
}

function validate(req: BootRequest): void {
  if (!req.name || !/^[\w.-]+$/.test(req.name)) {
    throw new RestoreError(FailureType.InvalidRequest, `boot name '${req.name}' must be letters, digits, '.', '_' or '-'`);
  }
  if (req.disks.length === 0) throw new RestoreError(FailureType.InvalidRequest, `boot '${req.name}' has no disks`);
  const max = (req.scsiController ?? 'virtio-scsi') === 'lsi' ? 7 : 64;
  if (req.disks.length > max) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `boot '${req.name}': ${req.disks.length} disks exceed the ${req.scsiController} limit of ${max}`,
    );
  }
  for (const d of req.disks) {
    if (!existsSync(d.path)) throw new RestoreError(FailureType.NotFound, `boot '${req.name}': disk image ${d.path} does not exist`);
  }
  if (!/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i.test(req.nic.mac) || (parseInt(req.nic.mac.slice(0, 2), 16) & 1) === 1) {
    throw new RestoreError(FailureType.InvalidRequest, `boot '${req.name}': nic.mac '${req.nic.mac}' is not a unicast MAC address`);
  }
}

async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** Reads the first line the port sends; slirp accepts before the guest listens, so an empty close is "not yet". */
function probeBanner(port: number, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    let data = '';
    const done = (v: string | undefined) => {
      clearTimeout(timer);
      s.destroy();
      resolve(v);
    };
    const timer = setTimeout(() => done(undefined), timeoutMs);
    s.setEncoding('latin1');
    s.on('data', (c: string) => {
      data += c;
      const nl = data.indexOf('\n');
      if (nl >= 0 || data.length > 255) done(data.slice(0, nl >= 0 ? nl : 255).replace(/\r$/, ''));
    });
    s.on('error', () => done(undefined));
    s.on('close', () => done(data ? data : undefined));
  });
}

async function readText(p: string): Promise<string> {
  try {
    return await fsp.readFile(p, 'latin1');
  } catch {
    return '';
  }
}

function tail(text: string, lines: number): string {
  // Terminal escape sequences make the log unreadable in a report.
  const clean = text.replace(new RegExp(`${String.fromCharCode(27)}\\[[0-9;?]*[A-Za-z]`, 'g'), '').replace(/\r/g, '');
  return clean.split('\n').slice(-lines).join('\n');
}

/** Limits concurrent boots: each takes the CPUs it is given under TCG. */
class Gate {
  private active = 0;
  private readonly queue: (() => void)[] = [];
  constructor(private readonly limit: () => number) {}
  async run<T>(fn: () => Promise<T>): Promise<T> {
    while (this.active >= this.limit()) await new Promise<void>((r) => this.queue.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.queue.shift()?.();
    }
  }
}

const gate = new Gate(() => Number(process.env.VMRESTORE_VERIFY_PARALLEL ?? 2) || 2);

/** Boots the disks and runs the checks; at most VMRESTORE_VERIFY_PARALLEL (default 2) boots at once. */
export async function verifyBoot(req: BootRequest): Promise<BootReport> {
  validate(req);
  return gate.run(() => bootOnce(req));
}

interface Observed {
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

async function bootOnce(req: BootRequest): Promise<BootReport> {
  const net_ = resolveNetwork(req.network);
  const timeoutMs = req.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const guestPort = req.sshPort ?? 22;
  const workDir = req.workDir ?? (await fsp.mkdtemp(path.join(os.tmpdir(), `vmrestore-verify-${req.name}-`)));
  await fsp.mkdir(workDir, { recursive: true });
  const files = {
    workDir,
    serialLog: path.join(workDir, 'serial.log'),
    firmwareLog: path.join(workDir, 'firmware.log'),
    pcap: path.join(workDir, 'net.pcap'),
  };
  // A unix socket path is limited to about 108 bytes: keep it short, outside workDir.
  const qmpSocket = path.join(os.tmpdir(), `vmr-qmp-${process.pid}-${Math.random().toString(36).slice(2, 8)}.sock`);
  let ovmf: { code: string; varsCopy: string } | undefined;
  if (req.firmware === 'efi') {
    const found = findOvmf();
    const varsCopy = path.join(workDir, 'OVMF_VARS.fd');
    await fsp.copyFile(found.vars, varsCopy);
    ovmf = { code: found.code, varsCopy };
  }
  const port = await freeLoopbackPort();
  const args = qemuArgs({
    firmware: req.firmware,
    ovmf,
    cpus: req.cpus ?? 2,
    memoryMiB: req.memoryMiB ?? 2048,
    disks: req.disks.map((d) => ({ path: path.resolve(d.path), format: d.format ?? 'raw' })),
    scsiController: req.scsiController ?? 'virtio-scsi',
    nic: { model: req.nic.model ?? 'virtio-net-pci', mac: req.nic.mac.toLowerCase() },
    userNet: [
      // restrict=on: the guest reaches nothing, neither host nor outside; only the forward below reaches it.
      'restrict=on',
      `net=${net_.subnet}`,
      `host=${net_.host}`,
      `dhcpstart=${net_.dhcpStart}`,
      `hostfwd=tcp:127.0.0.1:${port}-${net_.guestAddress}:${guestPort}`,
    ],
    ...files,
    qmpSocket,
  });

  const started = Date.now();
  const qemu: ChildProcess = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let qemuOutput = '';
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  qemu.stdout!.on('data', (b: Buffer) => (qemuOutput += b.toString()));
  qemu.stderr!.on('data', (b: Buffer) => (qemuOutput += b.toString()));
  const exitedPromise = new Promise<void>((resolve) => {
    qemu.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve();
    });
    qemu.on('error', (e) => {
      qemuOutput += e.message;
      exited = { code: null, signal: null };
      resolve();
    });
  });

  const seen: Observed = {};
  let stoppedBy: BootReport['stoppedBy'] = 'time-limit';
  let qmp: QmpClient | undefined;
  let traffic: GuestTraffic = { framesFromGuest: 0, dhcp: [], guestAddresses: [] };
  const mac = req.nic.mac.toLowerCase();
  let whileUpError: string | undefined;
  try {
    qmp = await Promise.race([QmpClient.connect(qmpSocket), exitedPromise.then(() => undefined)]);
    let bannerProbe: Promise<void> | undefined;
    let settleUntil: number | undefined;
    let nextProbeAt = 0;
    for (;;) {
      const now = Date.now();
      const elapsed = now - started;
      if (exited) {
        stoppedBy = 'qemu-exited';
        break;
      }
      if (req.signal?.aborted) {
        stoppedBy = 'aborted';
        break;
      }
      if (settleUntil !== undefined && now >= settleUntil) break;
      if (elapsed >= timeoutMs) {
        stoppedBy = 'time-limit';
        break;
      }

      const fw = await readText(files.firmwareLog);
      const serial = await readText(files.serialLog);
      if (seen.bootLoaderMs === undefined) {
        if (/Booting from 0000:7c00/.test(fw)) {
          seen.bootLoaderMs = elapsed;
          seen.bootLoaderDetail = 'SeaBIOS jumped to the boot sector of the first disk (Booting from 0000:7c00)';
        } else if (/BdsDxe: starting Boot\w+ "([^"]*)"/.test(serial + fw)) {
          seen.bootLoaderMs = elapsed;
          seen.bootLoaderDetail = `OVMF started a boot option: ${/BdsDxe: starting (Boot\w+ "[^"]*")/.exec(serial + fw)![1]}`;
        }
        const failure =
          /No bootable device|Boot failed: [^\n]*|BdsDxe: failed to load Boot\w+[^\n]*|No bootable option or device was found/.exec(
            fw + serial,
          );
        if (failure) seen.bootLoaderFailure = failure[0].trim();
      }
      if (seen.serialMs === undefined) {
        const line = KERNEL_LINE.exec(serial);
        if (line) {
          seen.serialMs = elapsed;
          seen.serialLine = line[0];
        }
      }
      if (seen.emergencyMs === undefined) {
        const hit = EMERGENCY.map((re) => re.exec(serial)).find((m) => m);
        if (hit) {
          seen.emergencyMs = elapsed;
          seen.emergencyLine = hit[0].trim();
          settleUntil ??= now + SETTLE_MS;
          stoppedBy = 'emergency-mode';
        }
      }
      if (seen.kernelMs === undefined && qmp) {
        const rip = /RIP=([0-9a-f]{16})/i.exec(await qmp.hmp('info registers').catch(() => ''));
        // Linux runs in the upper canonical half; firmware and boot loaders run identity-mapped below it.
        if (rip && BigInt(`0x${rip[1]}`) >= 0xffff800000000000n) {
          seen.kernelMs = elapsed;
          seen.kernelDetail = `vCPU 0 executing in the kernel's address range (RIP=${rip[1]})`;
        }
      }
      try {
        traffic = readGuestTraffic(await fsp.readFile(files.pcap), mac);
      } catch {
        // not written yet
      }
      if (seen.dhcpMs === undefined) {
        const ack = traffic.dhcp.find((d) => d.type === 'ack' && d.clientMac === mac);
        if (ack) {
          seen.dhcpMs = ack.atMs - started;
          seen.dhcpAddress = ack.yourAddress;
        }
      }
      if (seen.bannerMs === undefined && !bannerProbe && now >= nextProbeAt) {
        // Spaced out: each probe slirp holds open becomes an unauthenticated connection once sshd listens.
        nextProbeAt = now + PROBE_INTERVAL_MS;
        bannerProbe = probeBanner(port, 3_000).then((line) => {
          bannerProbe = undefined;
          // Only a protocol banner counts: sshd refusing ("Exceeded MaxStartups") is not an answer.
          if (line && SSH_BANNER.test(line) && seen.bannerMs === undefined) {
            seen.bannerMs = Date.now() - started;
            seen.banner = line;
          } else if (line) {
            seen.lastNonBanner = line;
          }
        });
      }
      if (seen.bannerMs !== undefined && settleUntil === undefined) {
        settleUntil = Date.now() + SETTLE_MS;
        stoppedBy = 'ssh-banner';
        if (req.whileUp) {
          const hook = req.whileUp({ host: '127.0.0.1', port });
          const left = Math.max(1, timeoutMs - (Date.now() - started));
          let timer: NodeJS.Timeout | undefined;
          const limit = new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error(`whileUp did not finish within the time limit`)), left);
          });
          await Promise.race([hook, limit])
            .catch((e: Error) => {
              whileUpError = e.message;
            })
            .finally(() => clearTimeout(timer));
        }
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    await bannerProbe;
  } finally {
    if (!exited) {
      await qmp?.execute('quit').catch(() => undefined);
      const killer = setTimeout(() => qemu.kill('SIGKILL'), 5_000);
      await exitedPromise;
      clearTimeout(killer);
    }
    qmp?.close();
    await fsp.rm(qmpSocket, { force: true });
  }
  try {
    traffic = readGuestTraffic(await fsp.readFile(files.pcap), mac);
  } catch {
    // no frames at all
  }
  const serial = await readText(files.serialLog);
  const checks = decide(req, seen, traffic, net_, timeoutMs, stoppedBy, exited && stoppedBy === 'qemu-exited' ? qemuOutput : undefined);
  const verdict = checks.every((c) => !c.required || c.status === 'passed') && !whileUpError ? 'passed' : 'failed';
  return {
    name: req.name,
    verdict,
    recoveryTimeMs: seen.bannerMs,
    checks,
    sshBanner: seen.banner,
    sshForward: { host: '127.0.0.1', port, guestAddress: net_.guestAddress, guestPort },
    firmware: req.firmware,
    accelerator: 'tcg',
    durationMs: Date.now() - started,
    stoppedBy,
    traffic,
    files,
    whileUpError,
    serialTail: verdict === 'failed' ? tail(serial, TAIL_LINES) : undefined,
    qemuCommand: ['qemu-system-x86_64', ...args],
  };
}

function decide(
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
