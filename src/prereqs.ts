import { spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from './domain/errors';
import { toolSearchPath } from './guest/exec';

/**
 * The external tools `npm start` and `npm test` need, with the Debian package that ships each. One list,
 * used by the demo, the test script and CI alike, so a fresh machine learns what it lacks before anything
 * starts instead of failing halfway through a restore.
 */
export type Purpose = 'start' | 'test';

export interface ExternalTool {
  /** An executable looked up in PATH, as the code runs it; or the absolute path of a file a package installs. */
  command: string;
  debianPackage: string;
  /** What it is used for, said once when it is missing. */
  why: string;
  /** Needed by the demo (`npm start`) or only by the test suite. */
  purpose: Purpose;
}

export const EXTERNAL_TOOLS: readonly ExternalTool[] = [
  { command: 'sfdisk', debianPackage: 'fdisk', why: 'partition tables of demo and test disks', purpose: 'start' },
  { command: 'mke2fs', debianPackage: 'e2fsprogs', why: 'ext4 filesystems of the demo Linux VM', purpose: 'start' },
  { command: 'debugfs', debianPackage: 'e2fsprogs', why: 'Linux guest preparation', purpose: 'start' },
  { command: 'mkntfs', debianPackage: 'ntfs-3g', why: 'NTFS filesystem of the demo Windows VM', purpose: 'start' },
  { command: 'ntfscp', debianPackage: 'ntfs-3g', why: 'Windows guest preparation', purpose: 'start' },
  { command: 'hivexsh', debianPackage: 'libhivex-bin', why: 'registry edits of Windows guest preparation', purpose: 'start' },
  { command: 'hivexml', debianPackage: 'libhivex-bin', why: 'reading registry hives', purpose: 'start' },
  { command: 'openssl', debianPackage: 'openssl', why: "the ARM simulator's lab CA", purpose: 'start' },
  { command: 'blkid', debianPackage: 'util-linux', why: 'filesystem UUIDs of guest disks', purpose: 'start' },
  { command: 'losetup', debianPackage: 'mount', why: "loop devices of the lab's LUN and hot-added disks", purpose: 'test' },
  { command: 'filefrag', debianPackage: 'e2fsprogs', why: 'an independent reader of block maps in the SAN tests', purpose: 'test' },
  { command: 'qemu-img', debianPackage: 'qemu-utils', why: 'an independent reader of restored disks in tests', purpose: 'test' },
  { command: 'chromium', debianPackage: 'chromium', why: 'the Web UI browser test', purpose: 'test' },
  { command: 'debootstrap', debianPackage: 'debootstrap', why: 'bootable Debian test guests', purpose: 'test' },
  { command: '/usr/lib/grub/i386-pc/boot.img', debianPackage: 'grub-pc-bin', why: 'GRUB for BIOS guests', purpose: 'test' },
  { command: '/usr/lib/grub/x86_64-efi/modinfo.sh', debianPackage: 'grub-efi-amd64-bin', why: 'GRUB for UEFI guests', purpose: 'test' },
  { command: 'mkfs.fat', debianPackage: 'dosfstools', why: 'EFI system partitions', purpose: 'test' },
  { command: 'mcopy', debianPackage: 'mtools', why: 'files on EFI system partitions', purpose: 'test' },
  { command: 'qemu-system-x86_64', debianPackage: 'qemu-system-x86', why: 'boot verification of restored guests', purpose: 'test' },
  { command: '/usr/share/seabios/bios.bin', debianPackage: 'seabios', why: 'BIOS firmware for boot verification', purpose: 'test' },
  { command: '/usr/share/OVMF/OVMF_CODE_4M.fd', debianPackage: 'ovmf', why: 'UEFI firmware for boot verification', purpose: 'test' },
  {
    command: '/usr/lib/syslinux/mbr/mbr.bin',
    debianPackage: 'syslinux-common',
    why: 'MBR boot code for UEFI-to-BIOS conversion',
    purpose: 'test',
  },
  { command: 'ssh-keygen', debianPackage: 'openssh-client', why: 'SSH keys of test guests', purpose: 'test' },
  { command: 'tmux', debianPackage: 'tmux', why: 'the terminal test of live progress bars', purpose: 'test' },
  { command: 'ip', debianPackage: 'iproute2', why: 'network-namespace hosts of the topology tests', purpose: 'test' },
  {
    command: '/usr/lib/postgresql/15/bin/postgres',
    debianPackage: 'postgresql',
    why: 'the PostgreSQL of the Temporal cluster suite (npm run test:cluster)',
    purpose: 'test',
  },
];

export type MissingTool = ExternalTool;

function onPath(command: string, envPath: string): boolean {
  const candidates = path.isAbsolute(command)
    ? [command]
    : envPath
        .split(path.delimiter)
        .filter(Boolean)
        .map((d) => path.join(d, command));
  // An absolute path names a data file a package installs (firmware, boot loader images): it must exist.
  const mode = path.isAbsolute(command) ? constants.F_OK : constants.X_OK;
  return candidates.some((c) => {
    try {
      accessSync(c, mode);
      return true;
    } catch {
      return false;
    }
  });
}

/** The tools of these purposes that are not on PATH (`test` includes what `start` needs). */
export function missingTools(purpose: Purpose, envPath = process.env.PATH ?? '', tools = EXTERNAL_TOOLS): MissingTool[] {
  const wanted = tools.filter((t) => purpose === 'test' || t.purpose === 'start');
  // Looked up where the tools are run from: PATH plus the sbin directories (see toolSearchPath).
  const search = toolSearchPath(envPath);
  return wanted.filter((t) => !onPath(t.command, search));
}

function packagesOf(missing: readonly MissingTool[]): string[] {
  return [...new Set(missing.map((t) => t.debianPackage))];
}

/** One line naming each missing command, its package, and the exact command that installs them. */
export function missingToolsMessage(missing: readonly MissingTool[], root: boolean): string {
  const pkgs = packagesOf(missing);
  const named = missing.map((t) => `${t.command} (${t.debianPackage})`).join(', ');
  return `missing tools: ${named}; install them with: ${root ? '' : 'sudo '}apt-get install -y ${pkgs.join(' ')}`;
}

export interface EnsureOptions {
  /** Install missing Debian packages when running as root on a machine with apt-get (default true). */
  install?: boolean;
  log?: (line: string) => void;
  envPath?: string;
}

/**
 * Checks every external tool for `purpose`. As root with apt-get, installs what is missing (saying what
 * and why, once); otherwise throws one line naming the packages and the command to install them.
 */
export function ensureExternalTools(purpose: Purpose, opts: EnsureOptions = {}): void {
  const envPath = opts.envPath ?? process.env.PATH ?? '';
  const log = opts.log ?? ((l: string) => process.stderr.write(l + '\n'));
  let missing = missingTools(purpose, envPath);
  if (missing.length === 0) return;
  const root = process.getuid?.() === 0;
  const canInstall = (opts.install ?? process.env.VMRESTORE_NO_INSTALL !== '1') && root && onPath('apt-get', envPath);
  if (canInstall) {
    const pkgs = packagesOf(missing);
    log(`installing Debian packages ${pkgs.join(' ')} (for ${missing.map((t) => `${t.command}: ${t.why}`).join('; ')})`);
    const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive', PATH: envPath };
    const update = spawnSync('apt-get', ['update', '-qq'], { env, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
    const install =
      update.status === 0
        ? spawnSync('apt-get', ['install', '-y', '-qq', ...pkgs], { env, stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' })
        : update;
    if (install.status !== 0) {
      throw new RestoreError(
        FailureType.Configuration,
        `apt-get could not install ${pkgs.join(' ')}: ${(install.stderr ?? '').trim().slice(-500)}`,
      );
    }
    missing = missingTools(purpose, envPath);
    if (missing.length === 0) return;
  }
  throw new RestoreError(FailureType.Configuration, missingToolsMessage(missing, root));
}
