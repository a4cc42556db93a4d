import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, symlinkSync } from 'node:fs';
import path from 'node:path';

/**
 * Each transport's own path in the lab (root only; see README "The lab's transports"):
 * - SAN: a LUN image (a sparse file) on a loop device, holding an ext4 filesystem that is mounted as
 *   the folder of one vcsim datastore. SAN proxies write that block device at the flat extent's physical
 *   offsets; the host (our vcsim build) serves the block map.
 * - NAS: the NFS datastore's folder bind-mounted at a path of its own. This kernel has no NFS client or
 *   server (no `nfs`/`nfsd` in /proc/filesystems, no modules), so a bind mount stands in for the NFS mount.
 * - HotAdd: our vcsim build makes disks attached to a proxy VM appear under that VM's device folder.
 * Without root (or loop devices) the lab offers hotadd (links to the flat files) and nbd only.
 */
export interface LabSan {
  datastore: string;
  image: string;
  device: string;
  mount: string;
}

export interface LabStorage {
  san?: LabSan;
  /** Datastore → where the proxy's NFS mount (a bind mount) shows it. */
  nasMounts: Record<string, string>;
  /** Per-proxy device folders: `<proxyDevices>/<proxy VM>/by-id`. */
  proxyDevices: string;
  loopDevices: boolean;
}

/** The datastore on the LUN; LocalDS_0, where restores go by default, is the NFS datastore. */
export const SAN_DATASTORE = 'LocalDS_1';
export const NAS_DATASTORE = 'LocalDS_0';
const LUN_BYTES = 16 * 1024 ** 3;

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed: ${(r.stderr || r.error?.message || '').trim()}`);
  }
  return r.stdout.trim();
}

/** Why the lab cannot set up loop devices and mounts here, or undefined when it can. */
export function storageUnavailable(): string | undefined {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not root';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control';
  for (const tool of ['losetup', 'mkfs.ext4', 'mount', 'umount']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) return `${tool} is not installed`;
  }
  return undefined;
}

/** Mount points at or below `root`, deepest first. */
function mountsUnder(root: string): string[] {
  const base = path.resolve(root);
  const points: string[] = [];
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const mp = line.split(' ')[4]?.replace(/\\040/g, ' ');
    if (mp && (mp === base || mp.startsWith(base + path.sep))) points.push(mp);
  }
  return points.sort((a, b) => b.length - a.length);
}

/** Loop devices whose backing file is at or below `root`. */
function loopsUnder(root: string): string[] {
  const r = spawnSync('losetup', ['--list', '--noheadings', '--output', 'NAME,BACK-FILE'], { encoding: 'utf8' });
  if (r.status !== 0) return [];
  const base = path.resolve(root);
  return r.stdout
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([dev, file]) => dev && file && (file === base || file.startsWith(base + path.sep)))
    .map(([dev]) => dev);
}

/**
 * Unmounts everything the lab mounted below `labDir` and detaches every loop device on a file below it
 * (also what a crashed vcsim left attached). Safe to call when nothing is set up.
 */
export function teardownLabStorage(labDir: string, log: (s: string) => void = () => {}): void {
  if (process.platform !== 'linux' || !existsSync('/proc/self/mountinfo')) return;
  const detach = (devs: string[]) => {
    for (const dev of devs) {
      // Right after an unmount the device can still be busy for a moment.
      for (let i = 0; i < 20 && spawnSync('losetup', ['--detach', dev]).status !== 0; i++) spawnSync('sleep', ['0.1']);
      log(`storage: detached ${dev}`);
    }
  };
  // Hot-added disks (loops on flat extents) first: they keep files on the LUN open.
  detach([...loopsUnder(path.join(labDir, 'vcsim')), ...loopsUnder(path.join(labDir, 'san', 'mnt'))]);
  for (const mp of [...mountsUnder(path.join(labDir, 'nas')), ...mountsUnder(path.join(labDir, 'san'))]) {
    const r = spawnSync('umount', [mp], { encoding: 'utf8' });
    if (r.status !== 0) spawnSync('umount', ['--lazy', mp]);
    log(`storage: unmounted ${mp}`);
  }
  detach(loopsUnder(path.join(labDir, 'san')));
  // A loop device still listed now is pinned elsewhere (another mount namespace): the kernel detaches it
  // when that lets go (autoclear).
  for (const dev of loopsUnder(labDir)) log(`storage: ${dev} is still in use elsewhere; the kernel detaches it once released`);
}

/** Before vcsim starts: the LUN (image, loop device, ext4, mounted) and the device folder. */
export function prepareLabStorage(labDir: string, log: (s: string) => void): LabStorage {
  const proxyDevices = path.join(labDir, 'vsphere-devices');
  teardownLabStorage(labDir, log);
  // The previous vcsim's device links name loop devices that are gone.
  rmSync(proxyDevices, { recursive: true, force: true });
  mkdirSync(proxyDevices, { recursive: true });
  const why = storageUnavailable();
  if (why) {
    log(`storage: ${why}, so no LUN and no NFS mount: the lab offers hotadd (links to the flat files) and nbd`);
    return { nasMounts: {}, proxyDevices, loopDevices: false };
  }
  const dir = path.join(labDir, 'san');
  mkdirSync(dir, { recursive: true });
  const image = path.join(dir, 'lun0.img');
  const mount = path.join(dir, 'mnt');
  mkdirSync(mount, { recursive: true });
  // A new file, not the old one truncated: a loop device whose detach is deferred (a mount namespace made
  // while the LUN was mounted, e.g. by `ip netns exec`, still holds the old filesystem) keeps the old inode.
  rmSync(image, { force: true });
  run('truncate', ['-s', String(LUN_BYTES), image]);
  run('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', 'nodiscard,lazy_itable_init=1,lazy_journal_init=1', image]);
  const device = run('losetup', ['--find', '--show', image]);
  try {
    // discard: blocks the filesystem frees go back to the image as holes, so deleted disks cost no space.
    run('mount', ['-o', 'discard', device, mount]);
    // Shared: mount namespaces made from this one later get our unmount too, so they do not pin the LUN.
    run('mount', ['--make-shared', mount]);
  } catch (err) {
    spawnSync('losetup', ['--detach', device]);
    throw err;
  }
  log(`storage: LUN ${image} on ${device}, ext4 mounted at ${mount}`);
  return { san: { datastore: SAN_DATASTORE, image, device, mount }, nasMounts: {}, proxyDevices, loopDevices: true };
}

/**
 * Once vcsim made its datastore folders: the SAN datastore's folder becomes the LUN's filesystem, and
 * the NAS datastore's folder is bind-mounted where the proxy's NFS mount would be.
 */
export function attachLabDatastores(labDir: string, storage: LabStorage, datastorePaths: Record<string, string>): LabStorage {
  const out: LabStorage = { ...storage, nasMounts: {} };
  if (storage.san) {
    const dsDir = datastorePaths[storage.san.datastore];
    if (!dsDir) throw new Error(`vcsim has no datastore ${storage.san.datastore} to put on the LUN`);
    if (readdirSync(dsDir).length > 0) throw new Error(`vcsim's ${dsDir} is not empty; cannot move it onto the LUN`);
    const onLun = path.join(storage.san.mount, storage.san.datastore);
    mkdirSync(onLun, { recursive: true });
    rmdirSync(dsDir);
    symlinkSync(onLun, dsDir);
    const nasDs = datastorePaths[NAS_DATASTORE];
    if (nasDs) {
      const nas = path.join(labDir, 'nas', NAS_DATASTORE);
      mkdirSync(nas, { recursive: true });
      run('mount', ['--bind', nasDs, nas]);
      run('mount', ['--make-shared', nas]);
      out.nasMounts[NAS_DATASTORE] = nas;
    }
  }
  return out;
}
