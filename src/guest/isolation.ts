/**
 * Guest preparation in a separate, unprivileged process.
 *
 * Guest images are hostile input, and the worker holds the Temporal connection, Azure/vCenter
 * credentials, storage keys and the payload encryption key. So the code that parses and edits a guest
 * image (the editors in this directory and the tools they drive: debugfs, hivexsh, ntfs-3g) runs in a
 * child process that:
 * - starts with a scrubbed environment: PATH, LC_ALL=C and a private HOME and TMPDIR, nothing else, and
 *   gets no configuration (its request is the image path and the OS type);
 * - when the worker runs as root, runs as an unprivileged uid/gid (65534, `nobody`/`nogroup`, unless
 *   told otherwise) and reaches only the working image, which is hard-linked (or, across filesystems,
 *   moved) into a directory private to that uid (mode 0700) for the run and handed back afterwards;
 * - is killed with its tools (its own process group) on timeout or cancellation.
 * No step needs root: ntfs-3g's FUSE mount (used only to create \Windows\AzureAgent) works for an
 * unprivileged user because Debian installs ntfs-3g setuid root for exactly this, and it unmounts
 * through umount's user-mount rule for FUSE. The parent keeps the clients and only sees the result.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FailureType, RestoreError, type FailureType as FailureTypeName } from '../domain/errors';
import type { GuestPreparationResult } from './types';
import { toolSearchPath } from './exec';

export type GuestOsType = 'Linux' | 'Windows';

/** What the child is told: nothing but where the disks are, what they hold and what to do to them. */
export interface GuestPrepRequest {
  osType: GuestOsType;
  imagePath: string;
  /** Windows only: a local installer to stage; it is copied into the private directory first. */
  agentInstallerPath?: string;
  /**
   * The VM's other disks in their order (disk 1, 2, ...): read for their filesystems' UUIDs, so fstab
   * lines naming them by bus device can name them by UUID. Linux only.
   */
  dataDiskPaths?: string[];
  /** After preparation, make the UEFI OS disk boot with BIOS (an Azure Generation 1 VM). */
  bootConversion?: 'uefi-to-bios';
}

/** The child's reply: the preparation's changes, then the boot conversion's, when one was asked for. */
export interface GuestPrepChildResult extends GuestPreparationResult {
  bootConversion?: GuestPreparationResult;
}

/** What the parent is asked to do: the child's request, plus the digest the installer's copy must have. */
export interface IsolatedPrepRequest extends GuestPrepRequest {
  /** SHA-256 the copy of agentInstallerPath must have (the one recorded when the restore started). */
  agentInstallerSha256?: string;
}

/** How the child ran, reported by the child itself (environment names only, never values). */
export interface SandboxReport {
  pid: number;
  uid: number;
  gid: number;
  groups: number[];
  envKeys: string[];
}

export interface IsolatedPrepResult extends GuestPrepChildResult {
  sandbox: SandboxReport;
}

export interface IsolationOptions {
  /** Identity to drop to when running as root (default 65534:65534). Ignored when not root. */
  uid?: number;
  gid?: number;
  /** Kills the child and its tools after this long (default 30 minutes). */
  timeoutMs?: number;
  signal?: AbortSignal;
  /**
   * The disk paths are attached disk devices (a link under the device root, such as
   * `/dev/disk/azure/scsi1/lun0`, to a block device; in the lab, to the simulator's disk file). Each is
   * resolved and handed to the child in place: owned by the child's uid for the run, its owner and mode put
   * back afterwards. Without it, the paths are image files and a symlink is refused.
   */
  devices?: boolean;
}

/** Messages the child sends on its IPC channel. */
export type ChildMessage =
  | { ok: true; result: GuestPrepChildResult; sandbox: SandboxReport }
  | { ok: false; error: { type: string; message: string; name: string }; sandbox?: SandboxReport };

export const UNPRIVILEGED_ID = 65534;
const DEFAULT_TIMEOUT_MS = 30 * 60_000;
const MAX_STDERR = 64 * 1024;

/** A hostile image must not make the child grow without bound either. */
const CHILD_HEAP_MIB = 2048;

function childCommand(): string[] {
  const here = __filename;
  const heap = `--max-old-space-size=${CHILD_HEAP_MIB}`;
  if (here.endsWith('.ts')) {
    // Running from source (tests, `bin/vmrestore.cjs`): the child loads TypeScript through tsx too.
    return [heap, '--require', require.resolve('tsx/cjs'), path.join(path.dirname(here), 'prep-child.ts')];
  }
  return [heap, path.join(path.dirname(here), 'prep-child.js')];
}

/** The child's whole environment. */
function childEnv(home: string, tmp: string): NodeJS.ProcessEnv {
  return {
    PATH: toolSearchPath(),
    LC_ALL: 'C',
    HOME: home,
    TMPDIR: tmp,
  };
}

/**
 * Prepares the guest on a local whole-disk image in an isolated child process (see the module comment)
 * and returns its changes and warnings. The image is edited in place and is back at imagePath afterwards,
 * on failure too.
 */
export async function prepareGuestDiskIsolated(req: IsolatedPrepRequest, opts: IsolationOptions = {}): Promise<IsolatedPrepResult> {
  const asRoot = process.getuid?.() === 0;
  let uid = asRoot ? (opts.uid ?? UNPRIVILEGED_ID) : undefined;
  let gid = asRoot ? (opts.gid ?? UNPRIVILEGED_ID) : undefined;
  const privilegeWarnings: string[] = [];
  if (uid !== undefined && gid !== undefined && !codeLoadableAs(uid, gid)) {
    // Installed where the unprivileged user cannot read it (e.g. under /root): still a separate process
    // with a scrubbed environment and no credentials, but said loudly, since it keeps root's rights.
    privilegeWarnings.push(
      `guest preparation ran as uid 0, not ${uid}: vmrestore's code (${path.dirname(__filename)}) is not readable by uid ${uid}; ` +
        'install it where that user can read it to drop privileges',
    );
    uid = undefined;
    gid = undefined;
  }
  const withPrivilegeWarnings = (r: IsolatedPrepResult): IsolatedPrepResult =>
    privilegeWarnings.length ? { ...r, warnings: [...privilegeWarnings, ...r.warnings] } : r;
  if (opts.devices) return withPrivilegeWarnings(await prepareDevicesIsolated(req, { ...opts, uid, gid }));
  if (req.dataDiskPaths?.length) {
    throw new RestoreError(FailureType.GuestPreparation, 'data disks are handed to guest preparation only as attached devices');
  }
  const imagePath = path.resolve(req.imagePath);
  const imageDir = path.dirname(imagePath);
  if ((await fsp.lstat(imagePath).catch(() => null))?.isSymbolicLink()) {
    throw new RestoreError(FailureType.GuestPreparation, `guest image ${imagePath} is a symlink; refused`);
  }
  const imageStat = await fsp.stat(imagePath).catch(() => {
    throw new RestoreError(FailureType.GuestPreparation, `guest image ${imagePath} does not exist`);
  });

  // The private directory: under the temporary directory (world-traversable) with the image hard-linked
  // in, or, when that is another filesystem, beside the image with the image moved in.
  let box = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-guest-prep-'));
  let boxedImage = path.join(box, 'disk.img');
  let placed: 'linked' | 'moved' | null = null;
  let restoreDirMode: number | null = null;
  try {
    try {
      await fsp.link(imagePath, boxedImage);
      placed = 'linked';
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
      await fsp.rm(box, { recursive: true, force: true });
      box = await fsp.mkdtemp(path.join(imageDir, '.guest-prep-'));
      boxedImage = path.join(box, 'disk.img');
      await fsp.rename(imagePath, boxedImage);
      placed = 'moved';
      const mode = (await fsp.stat(imageDir)).mode & 0o7777;
      // The child must pass through the image's directory to reach its own: search permission only.
      if (uid !== undefined && !(mode & 0o001)) {
        await fsp.chmod(imageDir, mode | 0o001);
        restoreDirMode = mode;
      }
    }
    const home = path.join(box, 'home');
    const tmp = path.join(box, 'tmp');
    await fsp.mkdir(home, { mode: 0o700 });
    await fsp.mkdir(tmp, { mode: 0o700 });
    let installer: string | undefined;
    if (req.agentInstallerPath) {
      installer = path.join(box, 'agent-installer.msi');
      await fsp.copyFile(req.agentInstallerPath, installer);
      const digest = req.agentInstallerSha256
        ? createHash('sha256')
            .update(await fsp.readFile(installer))
            .digest('hex')
        : undefined;
      if (digest && digest !== req.agentInstallerSha256) {
        throw new RestoreError(
          FailureType.Configuration,
          `config azure.windowsAgentInstaller: ${req.agentInstallerPath} changed since the restore started (SHA-256 ${digest}, recorded ${req.agentInstallerSha256})`,
        );
      }
    }
    if (uid !== undefined && gid !== undefined) {
      for (const p of [box, home, tmp, boxedImage, ...(installer ? [installer] : [])]) await fsp.chown(p, uid, gid);
    }
    const request: GuestPrepRequest = {
      osType: req.osType,
      imagePath: boxedImage,
      agentInstallerPath: installer,
      bootConversion: req.bootConversion,
    };
    const result = await runChild(request, {
      box,
      home,
      tmp,
      uid,
      gid,
      timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      signal: opts.signal,
    });
    return withPrivilegeWarnings(result);
  } finally {
    if (placed === 'moved') await fsp.rename(boxedImage, imagePath);
    if (placed && uid !== undefined) await fsp.chown(imagePath, imageStat.uid, imageStat.gid);
    if (restoreDirMode !== null) await fsp.chmod(imageDir, restoreDirMode).catch(() => undefined);
    await fsp.rm(box, { recursive: true, force: true });
  }
}

const loadable = new Map<string, boolean>();

/** Whether a process running as uid:gid can load the preparation child's code (checked once per identity). */
function codeLoadableAs(uid: number, gid: number): boolean {
  const key = `${uid}:${gid}`;
  let ok = loadable.get(key);
  if (ok === undefined) {
    const cmd = childCommand();
    const script = cmd[cmd.length - 1];
    const probe = `require('fs').accessSync(${JSON.stringify(script)}, require('fs').constants.R_OK)`;
    const r = spawnSync(process.execPath, [...cmd.slice(0, -1), '-e', probe], {
      uid,
      gid,
      cwd: os.tmpdir(),
      env: { PATH: toolSearchPath(), LC_ALL: 'C' },
      stdio: 'ignore',
      timeout: 60_000,
    });
    ok = r.status === 0;
    loadable.set(key, ok);
  }
  return ok;
}

/** A device handed to the child in place, with what to put back. */
interface GrantedDevice {
  path: string;
  uid: number;
  gid: number;
  mode: number;
}

/**
 * Device mode of prepareGuestDiskIsolated: the OS disk and data disk devices are resolved to their block
 * device (or, in the lab, the simulator's disk file), each must be reachable by the child's uid (every
 * directory above it searchable by others), and is owned by that uid, mode 0600, for the run only.
 */
async function prepareDevicesIsolated(
  req: GuestPrepRequest,
  opts: IsolationOptions & { uid?: number; gid?: number },
): Promise<IsolatedPrepResult> {
  const resolve = async (p: string, what: string): Promise<string> => {
    let real: string;
    try {
      real = await fsp.realpath(p);
    } catch {
      throw new RestoreError(FailureType.GuestPreparation, `${what} device ${p} does not exist`);
    }
    const st = await fsp.stat(real);
    if (!st.isBlockDevice() && !st.isFile()) {
      throw new RestoreError(
        FailureType.GuestPreparation,
        `${what} device ${p} resolves to ${real}, neither a block device nor a disk image`,
      );
    }
    if (opts.uid !== undefined) {
      for (let d = path.dirname(real); ; d = path.dirname(d)) {
        const ds = await fsp.stat(d);
        if (!(ds.mode & 0o001) && ds.uid !== opts.uid) {
          throw new RestoreError(
            FailureType.GuestPreparation,
            `${what} device ${real}: directory ${d} is not searchable by uid ${opts.uid}, so the preparation process cannot open it`,
          );
        }
        if (d === path.dirname(d)) break;
      }
    }
    return real;
  };
  const osDevice = await resolve(req.imagePath, 'OS disk');
  const dataDevices: string[] = [];
  for (const [i, p] of (req.dataDiskPaths ?? []).entries()) dataDevices.push(await resolve(p, `data disk ${i + 1}`));
  const all = [osDevice, ...dataDevices];
  if (new Set(all).size !== all.length) {
    throw new RestoreError(FailureType.GuestPreparation, `two disks of the VM resolve to the same device (${all.join(', ')})`);
  }
  const box = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-guest-prep-'));
  const granted: GrantedDevice[] = [];
  try {
    const home = path.join(box, 'home');
    const tmp = path.join(box, 'tmp');
    await fsp.mkdir(home, { mode: 0o700 });
    await fsp.mkdir(tmp, { mode: 0o700 });
    if (opts.uid !== undefined && opts.gid !== undefined) {
      for (const p of [box, home, tmp]) await fsp.chown(p, opts.uid, opts.gid);
      for (const p of all) {
        const st = await fsp.stat(p);
        granted.push({ path: p, uid: st.uid, gid: st.gid, mode: st.mode & 0o7777 });
        await fsp.chown(p, opts.uid, opts.gid);
        await fsp.chmod(p, 0o600);
      }
    }
    const request: GuestPrepRequest = {
      osType: req.osType,
      imagePath: osDevice,
      dataDiskPaths: dataDevices,
      bootConversion: req.bootConversion,
    };
    return await runChild(request, {
      box,
      home,
      tmp,
      uid: opts.uid,
      gid: opts.gid,
      timeoutMs: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      signal: opts.signal,
    });
  } finally {
    for (const g of granted.reverse()) {
      await fsp.chown(g.path, g.uid, g.gid).catch(() => undefined);
      await fsp.chmod(g.path, g.mode).catch(() => undefined);
    }
    await fsp.rm(box, { recursive: true, force: true });
  }
}

interface ChildSetup {
  box: string;
  home: string;
  tmp: string;
  uid?: number;
  gid?: number;
  timeoutMs: number;
  signal?: AbortSignal;
}

function runChild(request: GuestPrepRequest, s: ChildSetup): Promise<IsolatedPrepResult> {
  return new Promise<IsolatedPrepResult>((resolve, reject) => {
    if (s.signal?.aborted) {
      reject(s.signal.reason ?? new Error('aborted'));
      return;
    }
    const child = spawn(process.execPath, [...childCommand(), JSON.stringify(request)], {
      cwd: s.box,
      env: childEnv(s.home, s.tmp),
      uid: s.uid,
      gid: s.gid,
      // Its own process group, so a kill reaches the disk tools it started as well.
      detached: true,
      stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
    });
    let message: ChildMessage | undefined;
    let stderr = '';
    let stopped: string | undefined;
    const killGroup = (why: string) => {
      stopped ??= why;
      try {
        if (child.pid) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    };
    const timer = setTimeout(() => killGroup(`timed out after ${s.timeoutMs} ms`), s.timeoutMs);
    const onAbort = () => killGroup('cancelled');
    s.signal?.addEventListener('abort', onAbort, { once: true });
    child.stderr!.on('data', (b: Buffer) => {
      if (stderr.length < MAX_STDERR) stderr += b.toString('utf8');
    });
    child.on('message', (m: ChildMessage) => {
      message ??= m;
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      s.signal?.removeEventListener('abort', onAbort);
      reject(new RestoreError(FailureType.GuestPreparation, `could not start the guest preparation process: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      s.signal?.removeEventListener('abort', onAbort);
      // Tools the child left behind go with it.
      killGroup(stopped ?? 'finished');
      if (stopped === 'cancelled') {
        reject(s.signal?.reason ?? new Error('guest preparation cancelled'));
      } else if (stopped && stopped !== 'finished') {
        reject(
          new RestoreError(FailureType.GuestPreparation, `guest preparation of ${request.osType} disk ${stopped}; its process was killed`),
        );
      } else if (message?.ok) {
        resolve({ ...message.result, sandbox: message.sandbox });
      } else if (message && !message.ok) {
        const type = (Object.values(FailureType) as string[]).includes(message.error.type)
          ? (message.error.type as FailureTypeName)
          : FailureType.GuestPreparation;
        reject(new RestoreError(type, message.error.message));
      } else {
        const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
        reject(
          new RestoreError(
            FailureType.GuestPreparation,
            `guest preparation process ${how} without a result${stderr.trim() ? `: ${stderr.trim().slice(-2000)}` : ''}`,
          ),
        );
      }
    });
  });
}
