import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fsp } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import { readGuestTraffic, type GuestTraffic } from './pcap';
import { findOvmf, qemuArgs } from './qemu';
import { QmpClient } from './qmp';
import { decide, EMERGENCY, KERNEL_LINE, type Observed, SSH_BANNER } from './checks';
import { resolveNetwork } from './network';
import type { BootReport, BootRequest } from './report';

export * from './report';
export { resolveNetwork } from './network';

/**
 * Boots a set of disk images in qemu, the way a target platform presents them, on an isolated user-mode
 * network, and reports what a restore's owner wants to know: did it come up, and how long did it take.
 * Evidence comes from outside the guest: the firmware's debug port, the vCPU's instruction pointer, the
 * serial port, the frames on the virtual wire and the SSH port, so no agent or console is assumed.
 */

const DEFAULT_TIMEOUT_MS = 300_000;
const POLL_MS = 500;
const PROBE_INTERVAL_MS = 2_000;
/** After the banner, a little longer for late serial output (a getty prompt) to land. */
const SETTLE_MS = 2_000;
const TAIL_LINES = 40;

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

const parallelBoots = () => Number(process.env.VMRESTORE_VERIFY_PARALLEL ?? 2) || 2;
const gate = new Gate(parallelBoots);

/**
 * vCPUs per guest unless the request says: the host's cores shared by the boots that may run at once, one
 * to two each. Under TCG every vCPU is a host thread; more vCPU threads than cores make every boot slower
 * (three guests of two vCPUs on two cores took 173 s to SSH, of one vCPU 132 s; one two-vCPU guest of a
 * loaded host hung in a soft lockup).
 */
export function defaultBootCpus(cores = os.availableParallelism(), parallel = parallelBoots()): number {
  return Math.max(1, Math.min(2, Math.floor(cores / parallel)));
}

/** Boots the disks and runs the checks; at most VMRESTORE_VERIFY_PARALLEL (default 2) boots at once. */
export async function verifyBoot(req: BootRequest): Promise<BootReport> {
  validate(req);
  return gate.run(() => bootOnce(req));
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
    cpus: req.cpus ?? defaultBootCpus(),
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
