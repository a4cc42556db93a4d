import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../../guest/exec';
import { makeExt4FromTree } from '../../guest/linux/ext4';
import { writePartitionTable } from '../../guest/disk/partition';
import { copyGrubModules, FIRST_PARTITION, GRUB_DIR, installGrubBios, installGrubEfi } from './grub';
import { debianMirror } from './mirror';
import {
  BASE_PACKAGES,
  DATA_MARKER,
  DATA_MOUNT,
  DEBIAN_SUITE,
  ESP_MIB,
  GUEST_RECIPES,
  GUEST_USER,
  NETWORKD_REMOVES,
  type GuestFirmware,
  type GuestFstabNames,
  type GuestName,
  type GuestNetworkStyle,
  guestFiles,
} from './recipes';
import { MiB } from '../../domain/units';
import { cacheDir } from '../../cache-dir';

/** A built guest: its disks, and what a test needs to reach it as the VMware VM it imitates. */
export interface GuestImage {
  name: GuestName;
  hostname: string;
  /** Hash of the recipe sources, the package list and the host's GRUB; names the cache directory. */
  recipeHash: string;
  dir: string;
  firmware: GuestFirmware;
  partitionScheme: 'mbr' | 'gpt';
  /** How the guest's fstab names its filesystems (see `GuestFstabNames`). */
  fstabNames: GuestFstabNames;
  /** Raw sparse disk images, in the order the VM had them: OS disk, then the data disk. */
  osDisk: string;
  dataDisk: string;
  osDiskBytes: number;
  dataDiskBytes: number;
  rootPartition: { index: number; offsetBytes: number; fsUuid: string };
  espPartition?: { index: number; offsetBytes: number };
  dataPartition: { index: number; offsetBytes: number; fsUuid: string; marker: string };
  kernelVersion: string;
  network: {
    style: GuestNetworkStyle;
    nicName: string;
    mac: string;
    /** Static IPv4 address without prefix, its prefix length, its /N subnet and gateway. */
    address: string;
    prefixLength: number;
    subnet: string;
    gateway: string;
  };
  ssh: {
    user: string;
    /** OpenSSH private key authorised for `user` (mode 0600). */
    privateKeyPath: string;
    /** The guest's host public keys, as in `/etc/ssh/ssh_host_*_key.pub`. */
    hostKeys: string[];
  };
  build: { builtAt: string; seconds: number; baseTreeSeconds: number; baseTreeCached: boolean; mirror: string };
}

export interface EnsureGuestOptions {
  log?: (line: string) => void;
  /** Default `~/.cache/vmrestore/guests` (or under VMRESTORE_CACHE_DIR / XDG_CACHE_HOME). */
  cacheDir?: string;
}

export interface EnsuredGuest {
  image: GuestImage;
  /** True when the image came from the cache; false when this call built it. */
  cached: boolean;
  /** Wall time of this call. */
  seconds: number;
}

export function guestCacheDir(): string {
  return cacheDir('guests');
}

function sha256(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p).update('\0');
  return h.digest('hex');
}

/** The modules that shape the image (recipe and build steps): changing either changes the hash. */
function recipeSources(): Buffer[] {
  const ext = path.extname(__filename);
  return ['recipes', 'build', 'grub'].map((m) => {
    const file = path.join(__dirname, `${m}${ext}`);
    return Buffer.concat([Buffer.from(m), readFileSync(file)]);
  });
}

function hostGrubVersion(): string {
  // The core image and modules come from the host's grub-*-bin packages.
  const stamp = (p: string) => (existsSync(p) ? readFileSync(p) : Buffer.from('absent'));
  return sha256(stamp(path.join(GRUB_DIR, 'i386-pc', 'modinfo.sh')), stamp(path.join(GRUB_DIR, 'x86_64-efi', 'modinfo.sh')));
}

export function baseTreeHash(): string {
  return sha256('debootstrap', DEBIAN_SUITE, 'minbase', ...BASE_PACKAGES).slice(0, 16);
}

export function recipeHash(name: GuestName): string {
  return sha256(name, JSON.stringify(GUEST_RECIPES[name]), baseTreeHash(), hostGrubVersion(), ...recipeSources()).slice(0, 16);
}

function recipeOf(name: string) {
  const recipe = (GUEST_RECIPES as Record<string, (typeof GUEST_RECIPES)[GuestName]>)[name];
  if (!recipe) {
    throw new RestoreError(FailureType.InvalidRequest, `unknown guest '${name}' (known: ${Object.keys(GUEST_RECIPES).join(', ')})`);
  }
  return recipe;
}

async function requireTools(firmware: GuestFirmware): Promise<void> {
  const needed: [string, string][] = [
    ['debootstrap', 'debootstrap'],
    ['mke2fs', 'e2fsprogs'],
    ['sfdisk', 'fdisk'],
    ['grub-mkimage', firmware === 'bios' ? 'grub-pc-bin' : 'grub-efi-amd64-bin'],
    ['ssh-keygen', 'openssh-client'],
  ];
  if (firmware === 'efi') needed.push(['mkfs.fat', 'dosfstools'], ['mcopy', 'mtools']);
  const platform = firmware === 'bios' ? 'i386-pc' : 'x86_64-efi';
  const missing: string[] = [];
  for (const [tool, pkg] of needed) {
    try {
      await run('sh', ['-c', `command -v ${tool}`]);
    } catch {
      missing.push(`${tool} (Debian package ${pkg})`);
    }
  }
  if (!existsSync(path.join(GRUB_DIR, platform, 'normal.mod'))) missing.push(`${GRUB_DIR}/${platform} modules`);
  if (missing.length > 0) {
    throw new RestoreError(FailureType.Configuration, `building the ${firmware} test guest needs: ${missing.join(', ')}`);
  }
  if (process.getuid?.() !== 0) {
    throw new RestoreError(FailureType.Configuration, 'building a test guest needs root (debootstrap and chroot)');
  }
}

function chroot(root: string, args: string[], timeoutMs = 600_000) {
  return run('chroot', [root, ...args], {
    env: { LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive', PATH: '/usr/sbin:/usr/bin:/sbin:/bin' },
    timeoutMs,
  });
}

/** The bootstrapped tree every variant starts from, cached beside the images (about 600 MB). */
async function ensureBaseTree(
  cacheDir: string,
  log: (l: string) => void,
): Promise<{ root: string; seconds: number; cached: boolean; mirror: string }> {
  const started = Date.now();
  const dir = path.join(cacheDir, `base-${baseTreeHash()}`);
  const root = path.join(dir, 'root');
  const stamp = path.join(dir, 'complete.json');
  const mirror = debianMirror(DEBIAN_SUITE);
  if (existsSync(stamp)) {
    const now = new Date();
    await fsp.utimes(stamp, now, now).catch(() => undefined);
    return { root, seconds: (Date.now() - started) / 1000, cached: true, mirror };
  }

  const tmp = await fsp.mkdtemp(path.join(cacheDir, '.base-'));
  try {
    log(`debootstrap ${DEBIAN_SUITE} from ${mirror} (once; cached in ${dir})`);
    await run('debootstrap', ['--variant=minbase', `--include=${BASE_PACKAGES.join(',')}`, DEBIAN_SUITE, path.join(tmp, 'root'), mirror], {
      env: { LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' },
      timeoutMs: 1_800_000,
    });
    const r = path.join(tmp, 'root');
    await fsp.rm(path.join(r, 'var/cache/apt/archives'), { recursive: true, force: true });
    await fsp.mkdir(path.join(r, 'var/cache/apt/archives/partial'), { recursive: true });
    for (const e of await fsp.readdir(path.join(r, 'var/lib/apt/lists'))) {
      if (e !== 'partial' && e !== 'lock') await fsp.rm(path.join(r, 'var/lib/apt/lists', e), { recursive: true, force: true });
    }
    const seconds = (Date.now() - started) / 1000;
    await fsp.writeFile(path.join(tmp, 'complete.json'), JSON.stringify({ suite: DEBIAN_SUITE, packages: BASE_PACKAGES, mirror, seconds }));
    try {
      await fsp.rename(tmp, dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || !existsSync(stamp)) throw e;
      await fsp.rm(tmp, { recursive: true, force: true }); // another process bootstrapped it first
    }
    return { root, seconds, cached: false, mirror };
  } catch (e) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw e;
  }
}

async function writeGuestTree(root: string, files: Map<string, { content: string; mode?: number }>): Promise<void> {
  for (const [p, f] of files) {
    const full = path.join(root, p);
    await fsp.mkdir(path.dirname(full), { recursive: true });
    await fsp.rm(full, { force: true });
    await fsp.writeFile(full, f.content);
    await fsp.chmod(full, f.mode ?? 0o644);
  }
}

async function sparseFile(p: string, bytes: number): Promise<void> {
  const fh = await fsp.open(p, 'w');
  try {
    await fh.truncate(bytes);
  } finally {
    await fh.close();
  }
}

async function readUuid(): Promise<string> {
  return (await fsp.readFile('/proc/sys/kernel/random/uuid', 'utf8')).trim();
}

function mkext4(image: string, offsetBytes: number, sizeBytes: number, tree: string, uuid: string, label: string): Promise<void> {
  return makeExt4FromTree(image, { offsetBytes, sizeBytes, tree, uuid, label });
}

async function buildDataDisk(
  image: string,
  bytes: number,
  work: string,
  hostname: string,
  fsUuid: string,
): Promise<{ fsUuid: string; offsetBytes: number }> {
  const tree = path.join(work, 'data-tree');
  await fsp.mkdir(tree, { recursive: true });
  await fsp.writeFile(path.join(tree, DATA_MARKER), `data disk of ${hostname}\n`);
  await sparseFile(image, bytes);
  await writePartitionTable(image, {
    scheme: 'mbr',
    partitions: [{ startBytes: FIRST_PARTITION, sizeBytes: bytes - FIRST_PARTITION, type: 'linux' }],
  });
  await mkext4(image, FIRST_PARTITION, bytes - FIRST_PARTITION, tree, fsUuid, 'data');
  return { fsUuid, offsetBytes: FIRST_PARTITION };
}

async function build(name: GuestName, cacheDir: string, finalDir: string, log: (l: string) => void): Promise<GuestImage> {
  const started = Date.now();
  const recipe = recipeOf(name);
  await requireTools(recipe.firmware);
  const base = await ensureBaseTree(cacheDir, log);
  const work = await fsp.mkdtemp(path.join(cacheDir, `.build-${name}-`));
  try {
    const root = path.join(work, 'root');
    log(`building guest ${name} from the base tree`);
    await run('cp', ['-a', '--reflink=auto', base.root, root], { timeoutMs: 600_000 });

    const kernels = (await fsp.readdir(path.join(root, 'boot'))).filter((f) => f.startsWith('vmlinuz-'));
    if (kernels.length !== 1)
      throw new RestoreError(FailureType.Configuration, `expected one kernel in the base tree, found: ${kernels.join(', ') || 'none'}`);
    const kernelVersion = kernels[0].slice('vmlinuz-'.length);

    const uefi = recipe.firmware === 'efi';
    const rootFsUuid = await readUuid();
    const dataFsUuid = await readUuid();
    const espVolumeId = (await readUuid()).replace(/-/g, '').slice(0, 8).toUpperCase();
    const rootIndex = uefi ? 2 : 1;
    const byUuid = recipe.fstabNames === 'uuid';
    const files = guestFiles({
      recipe,
      kernelVersion,
      rootFsUuid,
      rootDevice: byUuid ? `UUID=${rootFsUuid}` : `/dev/sda${rootIndex}`,
      espDevice: uefi ? (byUuid ? `UUID=${espVolumeId.slice(0, 4)}-${espVolumeId.slice(4)}` : '/dev/sda1') : undefined,
      dataDevice: byUuid ? `UUID=${dataFsUuid}` : '/dev/sdb1',
    });
    await writeGuestTree(root, files);
    await fsp.mkdir(path.join(root, DATA_MOUNT.slice(1)), { recursive: true });
    if (uefi) await fsp.mkdir(path.join(root, 'boot/efi'), { recursive: true });
    await copyGrubModules(root, recipe.firmware);

    if (recipe.networkStyle === 'networkd') {
      await chroot(root, ['dpkg', '--purge', ...NETWORKD_REMOVES]);
      await chroot(root, ['systemctl', 'enable', 'systemd-networkd.service']);
    }
    await chroot(root, ['useradd', '--create-home', '--shell', '/bin/bash', '--uid', '1000', GUEST_USER]);
    const key = path.join(work, 'id_ed25519');
    await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `${GUEST_USER}@vmrestore-test`, '-f', key]);
    const sshDir = path.join(root, 'home', GUEST_USER, '.ssh');
    await fsp.mkdir(sshDir, { mode: 0o700 });
    await fsp.copyFile(`${key}.pub`, path.join(sshDir, 'authorized_keys'));
    await fsp.chmod(path.join(sshDir, 'authorized_keys'), 0o600);
    await run('chown', ['-R', '1000:1000', sshDir]);
    // Fresh host keys per build (the base tree's are shared by every variant), recorded in guest.json.
    for (const f of await fsp.readdir(path.join(root, 'etc/ssh'))) {
      if (f.startsWith('ssh_host_')) await fsp.rm(path.join(root, 'etc/ssh', f));
    }
    await chroot(root, ['ssh-keygen', '-A']);
    const hostKeys = (await fsp.readdir(path.join(root, 'etc/ssh'))).filter((f) => /^ssh_host_.*_key\.pub$/.test(f)).sort();
    const hostKeyLines = await Promise.all(hostKeys.map(async (f) => (await fsp.readFile(path.join(root, 'etc/ssh', f), 'utf8')).trim()));

    log(`update-initramfs for ${kernelVersion}`);
    await chroot(root, ['update-initramfs', '-u', '-k', kernelVersion]);
    // Nothing in the image may depend on the build host's identity.
    await fsp.writeFile(path.join(root, 'etc/machine-id'), '');
    await fsp.rm(path.join(root, 'var/lib/dbus/machine-id'), { force: true });

    const osDisk = path.join(work, 'os.img');
    const osBytes = recipe.osDiskMiB * MiB;
    await sparseFile(osDisk, osBytes);
    const espBytes = ESP_MIB * MiB;
    const rootOffset = uefi ? FIRST_PARTITION + espBytes : FIRST_PARTITION;
    // GPT keeps its backup header in the last MiB; MBR leaves it unused, alike for simplicity.
    const rootBytes = osBytes - rootOffset - MiB;
    await writePartitionTable(osDisk, {
      scheme: uefi ? 'gpt' : 'mbr',
      partitions: uefi
        ? [
            { startBytes: FIRST_PARTITION, sizeBytes: espBytes, type: 'efi', name: 'EFI system partition' },
            { startBytes: rootOffset, sizeBytes: rootBytes, type: 'linux', name: 'root' },
          ]
        : [{ startBytes: rootOffset, sizeBytes: rootBytes, type: 'linux', bootable: true }],
    });
    log(`mke2fs root filesystem into ${path.basename(osDisk)}`);
    await mkext4(osDisk, rootOffset, rootBytes, root, rootFsUuid, 'root');
    if (uefi) await installGrubEfi(osDisk, FIRST_PARTITION, espBytes, espVolumeId, rootFsUuid, work);
    else await installGrubBios(osDisk, rootFsUuid, work);

    const dataDisk = path.join(work, 'data.img');
    const dataBytes = recipe.dataDiskMiB * MiB;
    const data = await buildDataDisk(dataDisk, dataBytes, work, recipe.hostname, dataFsUuid);

    await fsp.rm(root, { recursive: true, force: true });
    for (const scratch of ['data-tree', 'early.cfg', 'core.img', 'BOOTX64.EFI']) {
      await fsp.rm(path.join(work, scratch), { recursive: true, force: true });
    }
    await fsp.chmod(key, 0o600);

    const [ip, prefix] = recipe.address.split('/');
    const prefixLength = Number(prefix);
    const image: GuestImage = {
      name,
      hostname: recipe.hostname,
      recipeHash: path.basename(finalDir),
      dir: finalDir,
      firmware: recipe.firmware,
      partitionScheme: uefi ? 'gpt' : 'mbr',
      fstabNames: recipe.fstabNames,
      osDisk: path.join(finalDir, 'os.img'),
      dataDisk: path.join(finalDir, 'data.img'),
      osDiskBytes: osBytes,
      dataDiskBytes: dataBytes,
      rootPartition: { index: rootIndex, offsetBytes: rootOffset, fsUuid: rootFsUuid },
      espPartition: uefi ? { index: 1, offsetBytes: FIRST_PARTITION } : undefined,
      dataPartition: { index: 1, offsetBytes: data.offsetBytes, fsUuid: data.fsUuid, marker: DATA_MARKER },
      kernelVersion,
      network: {
        style: recipe.networkStyle,
        nicName: recipe.nicName,
        mac: recipe.mac,
        address: ip,
        prefixLength,
        subnet: `${subnetOf(ip, prefixLength)}/${prefixLength}`,
        gateway: recipe.gateway,
      },
      ssh: { user: GUEST_USER, privateKeyPath: path.join(finalDir, 'id_ed25519'), hostKeys: hostKeyLines },
      build: {
        builtAt: new Date().toISOString(),
        seconds: (Date.now() - started) / 1000,
        baseTreeSeconds: base.seconds,
        baseTreeCached: base.cached,
        mirror: base.mirror,
      },
    };
    await fsp.writeFile(path.join(work, 'guest.json'), `${JSON.stringify(image, null, 2)}\n`);
    try {
      await fsp.rename(work, finalDir);
    } catch (e) {
      // Another process finished the same recipe first: its images, key and host keys belong together.
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      await fsp.rm(work, { recursive: true, force: true });
      return JSON.parse(await fsp.readFile(path.join(finalDir, 'guest.json'), 'utf8')) as GuestImage;
    }
    await pruneStale(cacheDir, name, finalDir);
    return image;
  } catch (e) {
    await fsp.rm(work, { recursive: true, force: true });
    throw e;
  }
}

/** A build not used for this long is removed by the next build of the same guest. */
const STALE_AFTER_MS = 24 * 3600_000;

/**
 * Builds of the same guest from other recipes that no one used for a day, and base trees of other
 * package lists as old: other checkouts share the cache, so anything recent may be booting right now.
 */
async function pruneStale(cacheDir: string, name: GuestName, keep: string): Promise<void> {
  const currentBase = `base-${baseTreeHash()}`;
  const cutoff = Date.now() - STALE_AFTER_MS;
  for (const entry of await fsp.readdir(cacheDir)) {
    const dir = path.join(cacheDir, entry);
    if (dir === keep || entry === currentBase || entry.startsWith('.')) continue;
    try {
      const stamp = path.join(dir, entry.startsWith('base-') ? 'complete.json' : 'guest.json');
      if ((await fsp.stat(stamp)).mtimeMs > cutoff) continue;
      if (!entry.startsWith('base-') && (JSON.parse(await fsp.readFile(stamp, 'utf8')) as GuestImage).name !== name) continue;
      await fsp.rm(dir, { recursive: true, force: true });
    } catch {
      // not a finished build: another process may be writing it
    }
  }
}

function subnetOf(ip: string, prefixLength: number): string {
  const n = ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
  const mask = prefixLength === 0 ? 0 : (0xffffffff << (32 - prefixLength)) >>> 0;
  const net = (n & mask) >>> 0;
  return [24, 16, 8, 0].map((s) => (net >>> s) & 255).join('.');
}

const inFlight = new Map<string, Promise<EnsuredGuest>>();

/**
 * The built guest `name`, from the cache when its recipe is unchanged, else built now (debootstrap once
 * for all variants, then minutes per variant). Concurrent calls in one process share one build.
 */
export function ensureGuestImage(name: GuestName, opts: EnsureGuestOptions = {}): Promise<EnsuredGuest> {
  recipeOf(name);
  const cacheDir = opts.cacheDir ?? guestCacheDir();
  const hash = recipeHash(name);
  const finalDir = path.join(cacheDir, hash);
  const key = finalDir;
  const pending = inFlight.get(key);
  if (pending) return pending;
  const p = (async (): Promise<EnsuredGuest> => {
    const started = Date.now();
    const manifest = path.join(finalDir, 'guest.json');
    if (existsSync(manifest)) {
      const image = JSON.parse(await fsp.readFile(manifest, 'utf8')) as GuestImage;
      // Marks the build as in use, so that pruning leaves it alone.
      const now = new Date();
      await fsp.utimes(manifest, now, now).catch(() => undefined);
      return { image, cached: true, seconds: (Date.now() - started) / 1000 };
    }
    await fsp.mkdir(cacheDir, { recursive: true });
    const image = await build(name, cacheDir, finalDir, opts.log ?? (() => {}));
    return { image, cached: false, seconds: (Date.now() - started) / 1000 };
  })();
  inFlight.set(key, p);
  p.finally(() => inFlight.delete(key)).catch(() => undefined);
  return p;
}
