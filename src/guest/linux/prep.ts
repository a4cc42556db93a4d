import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { Ext4Volume, MAX_GUEST_FILE_BYTES, describePath, isSafeGuestPath, type Ext4Op, type Ext4Stat } from './ext4';
import type { FirewallStyle, NetworkStyle } from '../../lab/images/linux-image';
import { NoPartitionTableError, probeFilesystem, readPartitionTable, type FilesystemInfo, type PartitionTable } from '../disk/partition';
import { guestChange, type GuestChange } from '../types';

/**
 * Prepares a Linux guest disk for Azure by editing its ext4 root filesystem in the image (debugfs, no
 * mount), following the Azure Migrate/ASR hydration list: sshd on, SSH through the firewall, no
 * VMware-era NIC naming or static addresses, DHCP on eth0, fstab that survives the new disk names,
 * serial console on the kernel command line, Azure agent on.
 *
 * Every edit is computed first by comparing current and desired content, then all are applied in one
 * debugfs run. A file already in the desired state produces no change, so a second run returns [].
 */

export interface LinuxPrepOptions {
  /** Partition number (sda1 = 1) of the root filesystem; found via /etc/fstab when omitted. */
  rootPartitionIndex?: number;
  /**
   * UUIDs of the filesystems on all disks being restored with this VM. When given, fstab UUID=
   * entries not among them get `nofail` too; without it UUID= entries are trusted to come along.
   */
  knownFilesystemUuids?: string[];
  /**
   * The filesystems of the VM's other disks, in disk order (disk 1 was /dev/sdb on VMware): fstab lines
   * naming a data disk by bus device are rewritten to its filesystem's UUID. Their UUIDs count as known.
   */
  dataDisks?: DataDiskFilesystems[];
}

/** The filesystems on one data disk: by partition number, 0 for a filesystem on the whole disk. */
export interface DataDiskFilesystems {
  /** 1 for the first data disk (the second disk of the VM). */
  diskIndex: number;
  filesystems: { partition: number; type: string; uuid: string }[];
}

/** Reads the partition table and filesystem UUIDs of the VM's data disks (paths in disk order). */
export async function dataDiskFilesystems(paths: string[]): Promise<DataDiskFilesystems[]> {
  const out: DataDiskFilesystems[] = [];
  for (const [i, p] of paths.entries()) {
    let table: PartitionTable | null = null;
    try {
      table = await readPartitionTable(p);
    } catch (e) {
      if (!(e instanceof NoPartitionTableError)) throw e;
    }
    const parts = table ? table.partitions.map((x) => ({ partition: x.index, offset: x.startBytes })) : [{ partition: 0, offset: 0 }];
    const filesystems: DataDiskFilesystems['filesystems'] = [];
    for (const part of parts) {
      const fs = await probeFilesystem(p, part.offset);
      if (fs && /^[0-9A-Fa-f-]+$/.test(fs.uuid)) filesystems.push({ partition: part.partition, type: fs.type, uuid: fs.uuid });
    }
    out.push({ diskIndex: i + 1, filesystems });
  }
  return out;
}

export type LinuxFamily = 'ubuntu' | 'debian' | 'rhel' | 'suse' | 'unknown';

export interface LinuxRoot {
  /** null when the disk has no partition table and the filesystem starts at byte 0. */
  partitionIndex: number | null;
  partitionOffset: number;
  filesystem: FilesystemInfo;
  table: PartitionTable | null;
}

export interface LinuxPrepResult {
  root: LinuxRoot;
  family: LinuxFamily;
  osName: string;
  networkStyle: NetworkStyle | null;
  firewalls: FirewallStyle[];
  changes: GuestChange[];
  /** Things preparation could not fix (missing packages, unsupported layouts); the restore goes on. */
  warnings: string[];
}

/**
 * Kernel arguments for Azure: the serial console (boot diagnostics and the serial console need ttyS0,
 * from the first kernel message on) and the kernel's own NIC names (net.ifnames=0), so that the VM's
 * first NIC is eth0 whatever bus it sits on: hv_netvsc on Azure is eth0 anyway, PCI NICs (other NIC types,
 * a verification lab) would otherwise be enpXsY. No `rootdelay`: initramfs-tools turns it into a sleep on
 * every boot, and initramfs-tools (up to 30 s) and dracut (rd.retry, rd.timeout) wait for a late root
 * device by themselves.
 */
const KERNEL_ARGS = ['console=ttyS0,115200n8', 'earlyprintk=ttyS0', 'net.ifnames=0'];
const AZURE_NIC = 'eth0';
/** Marks lines preparation commented out, so a reader (and a second run) can tell them apart. */
const DISABLED_MARK = '# vmrestore-disabled: ';
const NETWORKD_FILE = '/etc/systemd/network/05-vmrestore-azure-dhcp.network';
const NETPLAN_FILE = '/etc/netplan/90-vmrestore-azure-dhcp.yaml';
const DISABLED_SUFFIX = '.vmrestore-disabled';
const SYSTEMD_ETC = '/etc/systemd/system';

/** More boot entries than this are not a real system; the rest are left alone with a warning. */
const MAX_BOOT_ENTRIES = 256;
/** Directories preparation lists (netplan, boot entries) hold a handful of files. */
const MAX_DIR_ENTRIES = 1024;

/** systemd unit names (systemd.unit(5)): at most 255 characters of [A-Za-z0-9:_.\\@-] with a unit type suffix. */
function isUnitName(s: string): boolean {
  return (
    s.length <= 255 &&
    /^[A-Za-z0-9:_.\\@-]+\.(service|socket|target|device|mount|automount|swap|path|timer|slice|scope)$/.test(s) &&
    !s.startsWith('.') &&
    !s.includes('..')
  );
}

/** firewalld zone names: letters, digits, `_`, `-`, `+`, at most 64 (firewalld itself allows 17 for nftables). */
function isZoneName(s: string): boolean {
  return /^[A-Za-z0-9_+-]{1,64}$/.test(s);
}

const SSH_UNITS = ['ssh.service', 'sshd.service'];
const AGENT_UNITS = ['walinuxagent.service', 'waagent.service'];
const CLOUD_INIT_UNITS = [
  'cloud-init-local.service',
  'cloud-init.service',
  'cloud-config.service',
  'cloud-final.service',
  'cloud-init.target',
];

// ---------------------------------------------------------------------------------------------------
// Finding the root filesystem

export async function findLinuxRoot(imagePath: string, opts: { rootPartitionIndex?: number } = {}): Promise<LinuxRoot> {
  let table: PartitionTable | null = null;
  try {
    table = await readPartitionTable(imagePath);
  } catch (e) {
    if (!(e instanceof NoPartitionTableError)) throw e;
  }
  const candidates: { index: number | null; offset: number; typeCode?: string }[] = table
    ? table.partitions
        .filter((p) => opts.rootPartitionIndex === undefined || p.index === opts.rootPartitionIndex)
        // Linux-typed partitions first; others are still probed since type codes are often generic.
        .sort((a, b) => Number(b.type === 'linux') - Number(a.type === 'linux') || a.index - b.index)
        .map((p) => ({ index: p.index, offset: p.startBytes, typeCode: p.typeCode }))
    : [{ index: null, offset: 0 }];
  if (table && opts.rootPartitionIndex !== undefined && candidates.length === 0) {
    throw new RestoreError(FailureType.GuestPreparation, `${imagePath} has no partition ${opts.rootPartitionIndex}`);
  }
  const seen: string[] = [];
  for (const c of candidates) {
    const fs = await probeFilesystem(imagePath, c.offset);
    const label = c.index === null ? 'whole disk' : `partition ${c.index}`;
    if (!fs || !fs.type.startsWith('ext')) {
      const lvm = c.typeCode === '8e' || c.typeCode === 'E6D6D379-F507-44C2-A23C-238F2A3DF928';
      seen.push(`${label}: ${fs ? fs.type : lvm ? 'LVM' : 'unknown'}`);
      continue;
    }
    let st: Ext4Stat | null;
    try {
      st = await new Ext4Volume(imagePath, c.offset).stat('/etc/fstab');
    } catch (e) {
      // A damaged filesystem rules this candidate out; another partition may still be the root.
      if (!(e instanceof RestoreError)) throw e;
      seen.push(`${label}: ${fs.type} that cannot be opened (${e.message.slice(0, 200)})`);
      continue;
    }
    if (st) return { partitionIndex: c.index, partitionOffset: c.offset, filesystem: fs, table };
    seen.push(`${label}: ${fs.type} without /etc/fstab`);
  }
  throw new RestoreError(
    FailureType.GuestPreparation,
    `no ext2/3/4 root filesystem (one holding /etc/fstab) found in ${imagePath}` +
      (seen.length ? ` (${seen.join('; ')})` : '') +
      '; XFS, Btrfs and LVM roots are not supported by offline preparation',
  );
}

/** Reads a file of the ext4 filesystem at partitionOffset, following symlinks; null if missing. */
export async function readGuestFile(imagePath: string, partitionOffset: number, guestPath: string): Promise<string | null> {
  return new Ext4Volume(imagePath, partitionOffset).readText(guestPath);
}

// ---------------------------------------------------------------------------------------------------
// Planning context: cached reads (nothing changes until apply) and the list of planned edits

interface FileRef {
  /** The path preparation asked for. */
  intended: string;
  /** Where the content lives after following symlinks; an allowed edit is written there. */
  path: string;
  /** Paths visited from `intended` to `path` (one entry when no symlink was followed). */
  hops: string[];
  text: string;
  bytes: Buffer;
  stat: Ext4Stat;
}

/**
 * The symlink rule for edits. Preparation reads through guest symlinks (os-release is usually one), but
 * writes only to the file it means to change:
 * - a file under /etc is edited only when the path itself is a regular file: a symlink there (say
 *   /etc/default/grub -> /etc/shadow, or -> ../../root/x) is left alone with a warning;
 * - a boot loader file under /boot may be a symlink (EL on UEFI links /boot/grub2/grubenv into the ESP)
 *   and is edited at its target only when every hop of the link stays inside /boot;
 * - no directory on the way to any path preparation writes, creates or removes may be a symlink (checked
 *   for every operation just before applying; such operations are dropped with a warning);
 * - writes replace the directory entry (new inode), so a hard link to another file is never written
 *   through, and links preparation creates or removes are themselves the object changed.
 */
function followAllowed(ref: FileRef): boolean {
  if (ref.hops.length === 1) return true;
  return ref.intended.startsWith('/boot/') && ref.hops.every((h) => h.startsWith('/boot/'));
}

/** One planned write with the change record it produces, so both are dropped together. */
interface PlannedOp {
  op: Ext4Op;
  change: GuestChange;
}

class Plan {
  readonly planned: PlannedOp[] = [];
  readonly warnings: string[] = [];
  private files = new Map<string, FileRef | null>();
  private stats = new Map<string, Ext4Stat | null>();
  private warned = new Set<string>();

  constructor(readonly vol: Ext4Volume) {}

  get changes(): GuestChange[] {
    return this.planned.map((p) => p.change);
  }

  get ops(): Ext4Op[] {
    return this.planned.map((p) => p.op);
  }

  warn(message: string): void {
    if (this.warned.has(message)) return;
    this.warned.add(message);
    this.warnings.push(message);
  }

  async prefetch(paths: string[]): Promise<void> {
    const todo = paths.filter((p) => !this.files.has(p));
    if (!todo.length) return;
    const safe = todo.filter((p) => {
      if (isSafeGuestPath(p)) return true;
      this.files.set(p, null);
      this.warn(`${describePath(p)}: not a path that can be read safely; skipped`);
      return false;
    });
    for (const [p, r] of await this.vol.readResolved(safe)) {
      if (r && r.content === null) {
        this.warn(`${p}: ${r.stat.size} bytes, over the ${MAX_GUEST_FILE_BYTES}-byte limit for configuration files; not read or changed`);
        this.files.set(p, null);
        continue;
      }
      this.files.set(
        p,
        r
          ? { intended: normalizePath(p), path: r.path, hops: r.hops, text: r.content!.toString('utf8'), bytes: r.content!, stat: r.stat }
          : null,
      );
    }
  }

  async file(p: string): Promise<FileRef | null> {
    await this.prefetch([p]);
    return this.files.get(p) ?? null;
  }

  async text(p: string): Promise<string | null> {
    return (await this.file(p))?.text ?? null;
  }

  /** lstat (the last component is not followed). */
  async lstatMany(paths: string[]): Promise<void> {
    const todo = paths.map(normalizePath).filter((p) => !this.stats.has(p));
    if (!todo.length) return;
    for (const p of todo.filter((x) => !isSafeGuestPath(x))) this.stats.set(p, null);
    for (const [p, st] of await this.vol.statMany(todo.filter(isSafeGuestPath))) this.stats.set(p, st);
  }

  async lstat(p: string): Promise<Ext4Stat | null> {
    await this.lstatMany([p]);
    return this.stats.get(normalizePath(p)) ?? null;
  }

  /** Directory entries whose names can be used in a path; others are skipped with a warning. */
  async list(dir: string) {
    let entries = await this.vol.list(dir);
    if (!entries) return null;
    if (entries.length > MAX_DIR_ENTRIES) {
      this.warn(`${dir} holds ${entries.length} entries; only the first ${MAX_DIR_ENTRIES} are looked at`);
      entries = entries.slice(0, MAX_DIR_ENTRIES);
    }
    return entries.filter((e) => {
      if (!e.name.includes('/') && isSafeGuestPath(`${dir}/${e.name}`)) return true;
      this.warn(`${dir}: entry ${describePath(e.name)} has a name that cannot be handled safely; skipped`);
      return false;
    });
  }

  /** Rewrites a file when the content differs, under the symlink rule (see followAllowed). */
  edit(ref: FileRef, after: string, description: string): void {
    if (ref.text === after) return;
    if (!followAllowed(ref)) {
      this.warn(
        `${ref.intended} is a symlink to ${describePath(ref.hops[1] ?? ref.path)}; not followed, left unchanged (wanted: ${description})`,
      );
      return;
    }
    const via = ref.hops.length > 1 ? ` (through the symlink ${ref.intended})` : '';
    this.planned.push({
      op: { op: 'write', path: ref.path, content: after },
      change: guestChange({
        path: ref.path,
        action: 'edit',
        description: description + via,
        before: ref.bytes,
        after,
        diffBefore: ref.text,
        diffAfter: after,
      }),
    });
  }

  /** Writes a file of our own at p (replacing whatever entry is there, a symlink included, without following it). */
  async create(p: string, content: string | Buffer, mode: number, description: string): Promise<void> {
    const before = await this.entryBytes(p);
    if (before !== null && Buffer.from(content).equals(before)) return;
    this.planned.push({
      op: { op: 'write', path: p, content, mode },
      change: guestChange({ path: p, action: 'create', description, before, after: content }),
    });
  }

  async remove(p: string, description: string): Promise<void> {
    const before = await this.entryBytes(p);
    this.planned.push({
      op: { op: 'rm', path: p },
      change: guestChange({ path: p, action: 'remove', description, before, after: null }),
    });
  }

  async symlink(p: string, target: string, description: string): Promise<void> {
    const st = await this.lstat(p);
    const before = await this.entryBytes(p);
    this.planned.push({
      op: { op: 'symlink', path: p, target },
      change: guestChange({
        path: p,
        action: 'symlink',
        description,
        before,
        after: `-> ${target}`,
        diffBefore: st?.type === 'symlink' ? `-> ${st.linkTarget ?? '?'}` : null,
        diffAfter: `-> ${target}`,
      }),
    });
  }

  /** What the entry at p holds now, without following a final symlink: bytes of a file, `-> target` of a link. */
  private async entryBytes(p: string): Promise<Buffer | null> {
    const st = await this.lstat(p);
    if (!st) return null;
    if (st.type === 'symlink') return Buffer.from(`-> ${st.linkTarget ?? '?'}`);
    if (st.type !== 'regular') return Buffer.from(`(${st.type})`);
    const f = await this.file(p);
    return f && f.hops.length === 1 ? f.bytes : Buffer.from(`(regular file, ${st.size} bytes)`);
  }

  /**
   * Drops every planned operation below a symlinked directory (the symlink rule), with a warning each.
   * Runs once, just before the operations are applied.
   */
  async enforceNoDirectorySymlinks(): Promise<void> {
    const ancestors = new Set<string>();
    for (const { op } of this.planned) {
      for (let d = path.posix.dirname(normalizePath(op.path)); d !== '/'; d = path.posix.dirname(d)) ancestors.add(d);
    }
    await this.lstatMany([...ancestors]);
    const kept: PlannedOp[] = [];
    for (const p of this.planned) {
      let linked: string | null = null;
      for (let d = path.posix.dirname(normalizePath(p.op.path)); d !== '/' && !linked; d = path.posix.dirname(d)) {
        if (this.stats.get(d)?.type === 'symlink') linked = d;
      }
      if (!linked) {
        kept.push(p);
        continue;
      }
      const target = this.stats.get(linked)?.linkTarget ?? '?';
      this.warn(
        `${p.op.path}: directory ${linked} is a symlink to ${describePath(target)}; not followed, left unchanged (wanted: ${p.change.description})`,
      );
    }
    this.planned.splice(0, this.planned.length, ...kept);
  }
}

function normalizePath(p: string): string {
  const n = path.posix.normalize('/' + p);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

// ---------------------------------------------------------------------------------------------------
// Distro and style detection

function parseShellVars(text: string): Map<string, string> {
  const vars = new Map<string, string>();
  for (const line of text.split('\n')) {
    const m = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) continue;
    let v = m[2].trim();
    if ((v.startsWith('"') && v.endsWith('"')) || (v.startsWith("'") && v.endsWith("'"))) v = v.slice(1, -1);
    vars.set(m[1], v);
  }
  return vars;
}

async function detectFamily(plan: Plan): Promise<{ family: LinuxFamily; osName: string }> {
  const osr = (await plan.text('/etc/os-release')) ?? (await plan.text('/usr/lib/os-release'));
  if (osr) {
    const v = parseShellVars(osr);
    const ids = [v.get('ID') ?? '', ...(v.get('ID_LIKE') ?? '').split(/\s+/)].map((s) => s.toLowerCase());
    const osName = v.get('PRETTY_NAME') ?? v.get('NAME') ?? ids[0];
    if (ids[0] === 'ubuntu') return { family: 'ubuntu', osName };
    if (ids.includes('debian') || ids.includes('ubuntu')) return { family: 'debian', osName };
    if (ids.some((i) => ['rhel', 'centos', 'fedora'].includes(i))) return { family: 'rhel', osName };
    if (ids.some((i) => i.startsWith('suse') || i.startsWith('sles') || i.startsWith('opensuse'))) return { family: 'suse', osName };
    return { family: 'unknown', osName };
  }
  // Older guests without os-release: the release files ASR looks for.
  const rh = (await plan.text('/etc/redhat-release')) ?? (await plan.text('/etc/oracle-release'));
  if (rh) return { family: 'rhel', osName: rh.trim() };
  const suse = await plan.text('/etc/SuSE-release');
  if (suse) return { family: 'suse', osName: suse.split('\n')[0].trim() };
  const lsb = await plan.text('/etc/lsb-release');
  if (lsb && /DISTRIB_ID=\s*"?Ubuntu/i.test(lsb)) return { family: 'ubuntu', osName: 'Ubuntu' };
  const deb = await plan.text('/etc/debian_version');
  if (deb) return { family: 'debian', osName: `Debian ${deb.trim()}` };
  return { family: 'unknown', osName: 'unknown' };
}

async function detectNetworkStyle(plan: Plan, family: LinuxFamily): Promise<NetworkStyle | null> {
  const netplan = await plan.list('/etc/netplan');
  if (netplan && (family === 'ubuntu' || netplan.some((e) => e.name.endsWith('.yaml')))) return 'netplan';
  // Followed for detection only; edits below a symlinked directory are dropped (see followAllowed).
  const scripts = (await plan.vol.resolveMany(['/etc/sysconfig/network-scripts'])).get('/etc/sysconfig/network-scripts');
  if (scripts?.stat.type === 'directory') return 'ifcfg';
  if (await plan.file('/etc/network/interfaces')) return 'interfaces';
  return null;
}

// ---------------------------------------------------------------------------------------------------
// systemd units

function parseInstall(unitText: string): { wantedBy: string[]; requiredBy: string[]; alias: string[] } {
  const out = { wantedBy: [] as string[], requiredBy: [] as string[], alias: [] as string[] };
  let section = '';
  for (const raw of unitText.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      section = sec[1];
      continue;
    }
    if (section !== 'Install') continue;
    const kv = /^(\w+)\s*=\s*(.*)$/.exec(line);
    if (!kv) continue;
    const values = kv[2].split(/\s+/).filter(Boolean);
    if (kv[1] === 'WantedBy') out.wantedBy.push(...values);
    else if (kv[1] === 'RequiredBy') out.requiredBy.push(...values);
    else if (kv[1] === 'Alias') out.alias.push(...values);
  }
  return out;
}

function vendorUnitDirs(family: LinuxFamily): string[] {
  // Enablement links name the directory the distro's packages install to, as systemctl would.
  return family === 'ubuntu' || family === 'debian'
    ? ['/lib/systemd/system', '/usr/lib/systemd/system']
    : ['/usr/lib/systemd/system', '/lib/systemd/system'];
}

/**
 * Enables the first installed unit of `names` the way `systemctl enable` does: unmask it, link it into
 * each WantedBy/RequiredBy target's .wants/.requires directory and create its aliases.
 * Returns the unit name, or null when none is installed.
 */
async function enableUnit(plan: Plan, family: LinuxFamily, names: string[], why: string): Promise<string | null> {
  const dirs = vendorUnitDirs(family);
  const candidates = names.flatMap((n) => [`${SYSTEMD_ETC}/${n}`, ...dirs.map((d) => `${d}/${n}`)]);
  await plan.prefetch(candidates);
  await plan.lstatMany(names.map((n) => `${SYSTEMD_ETC}/${n}`));
  for (const name of names) {
    const etcPath = `${SYSTEMD_ETC}/${name}`;
    const etc = await plan.lstat(etcPath);
    const masked = etc?.type === 'symlink' && etc.linkTarget === '/dev/null';
    let unitPath: string | null = null;
    let unitText: string | null = null;
    for (const d of dirs) {
      const f = await plan.file(`${d}/${name}`);
      if (f) {
        unitPath = `${d}/${name}`;
        unitText = f.text;
        break;
      }
    }
    // A unit the administrator placed in /etc itself is enabled in place.
    if (!unitPath && etc?.type === 'regular') {
      unitPath = etcPath;
      unitText = await plan.text(etcPath);
    }
    if (!unitPath || unitText === null) continue;

    if (masked) await plan.remove(etcPath, `unmask ${name} (${why})`);
    const install = parseInstall(unitText);
    // Names from the unit file become paths under /etc/systemd/system: only valid unit names are used.
    const valid = (what: string, units: string[]) =>
      units.filter((u) => {
        if (isUnitName(u)) return true;
        plan.warn(`${unitPath}: ${what}=${describePath(u)} is not a valid unit name; ignored`);
        return false;
      });
    install.wantedBy = valid('WantedBy', install.wantedBy);
    install.requiredBy = valid('RequiredBy', install.requiredBy);
    install.alias = valid('Alias', install.alias);
    const wantedBy = install.wantedBy.length || install.requiredBy.length ? install.wantedBy : ['multi-user.target'];
    const links = [
      ...wantedBy.map((t) => ({ at: `${SYSTEMD_ETC}/${t}.wants/${name}`, what: `WantedBy=${t}` })),
      ...install.requiredBy.map((t) => ({ at: `${SYSTEMD_ETC}/${t}.requires/${name}`, what: `RequiredBy=${t}` })),
      ...install.alias.map((a) => ({ at: `${SYSTEMD_ETC}/${a}`, what: `Alias=${a}` })),
    ];
    await plan.lstatMany(links.map((l) => l.at));
    const resolved = await plan.vol.resolveMany(links.map((l) => l.at));
    for (const l of links) {
      const target = resolved.get(l.at);
      if (target && target.stat.type === 'regular') continue;
      await plan.symlink(l.at, unitPath, `enable ${name} (${l.what}): ${why}`);
    }
    return name;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------
// Firewalls

/** An INPUT-chain rule line that accepts TCP 22 from anywhere. */
function acceptsSsh(line: string, chain: RegExp): boolean {
  const l = ` ${line.trim()} `;
  if (!chain.test(line.trim())) return false;
  if (!/\s-j\s+(ACCEPT|ufw6?-user-limit-accept)\s/.test(l)) return false;
  if (/\s-s\s|\s--source\s|\s!\s/.test(l)) return false;
  if (/\s-p\s+(?!tcp\s)\S+/.test(l)) return false;
  return /\s--dport\s+(22|ssh)\s/.test(l) || /\s--dports\s+(\S+,)?(22|ssh)(,\S*)?\s/.test(l);
}

function fixUfw(plan: Plan, ref: FileRef, v6: boolean): void {
  const chain = v6 ? 'ufw6-user-input' : 'ufw-user-input';
  const lines = ref.text.split('\n');
  if (lines.some((l) => acceptsSsh(l, new RegExp(`^-A ${chain}\\s`)))) return;
  const end = lines.findIndex((l) => l.trim() === '### END RULES ###');
  if (end < 0) {
    plan.warn(`${ref.path}: ufw rules file has no "### END RULES ###" marker; SSH not opened`);
    return;
  }
  const any = v6 ? '::/0' : '0.0.0.0/0';
  lines.splice(end, 0, `### tuple ### allow tcp 22 ${any} any ${any} in`, `-A ${chain} -p tcp --dport 22 -j ACCEPT`, '');
  plan.edit(ref, lines.join('\n'), 'ufw: allow TCP 22 so SSH reaches the VM on Azure');
}

function fixIptables(plan: Plan, ref: FileRef): void {
  const lines = ref.text.split('\n');
  const start = lines.findIndex((l) => l.trim() === '*filter');
  if (start < 0) return;
  let commit = lines.findIndex((l, i) => i > start && l.trim() === 'COMMIT');
  if (commit < 0) commit = lines.length;
  const body = lines.slice(start + 1, commit);
  const input = /^-A INPUT\s/;
  if (body.some((l) => acceptsSsh(l, input))) return;
  const policyBlocks = body.some((l) => /^:INPUT\s+(DROP|REJECT)\b/.test(l.trim()));
  const isBlock = (l: string) => input.test(l.trim()) && /\s-j\s+(DROP|REJECT)\b/.test(` ${l} `);
  if (!policyBlocks && !body.some(isBlock)) return;
  let at = lines.findIndex((l, i) => i > start && i < commit && isBlock(l));
  if (at >= 0) {
    // Keep a "log, then drop" pair together: accepted SSH packets must not be logged as dropped.
    while (at - 1 > start && input.test(lines[at - 1].trim()) && /\s-j\s+LOG\b/.test(` ${lines[at - 1]} `)) at--;
  } else {
    const lastInput = lines.reduce((acc, l, i) => (i > start && i < commit && input.test(l.trim()) ? i : acc), -1);
    at = lastInput >= 0 ? lastInput + 1 : commit;
  }
  lines.splice(at, 0, '-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT');
  plan.edit(ref, lines.join('\n'), 'iptables: accept TCP 22 before the INPUT drop so SSH reaches the VM on Azure');
}

async function fixFirewalld(plan: Plan): Promise<boolean> {
  const conf = await plan.text('/etc/firewalld/firewalld.conf');
  const etcZones = await plan.list('/etc/firewalld/zones');
  if (conf === null && etcZones === null) return false;
  const zone = (conf && parseShellVars(conf).get('DefaultZone')) || 'public';
  if (!isZoneName(zone)) {
    plan.warn(`firewalld: DefaultZone ${describePath(zone)} in /etc/firewalld/firewalld.conf is not a valid zone name; SSH not opened`);
    return true;
  }
  const etcPath = `/etc/firewalld/zones/${zone}.xml`;
  const etcRef = await plan.file(etcPath);
  const base = etcRef?.text ?? (await plan.text(`/usr/lib/firewalld/zones/${zone}.xml`));
  if (base === null) {
    plan.warn(`firewalld: zone ${zone} has no definition in /etc or /usr/lib; SSH not opened`);
    return true;
  }
  const hasSsh =
    /<service\s+name=["']ssh["']\s*\/?>/.test(base) || /<port\b(?=[^>]*\bport=["']22["'])(?=[^>]*\bprotocol=["']tcp["'])[^>]*>/.test(base);
  if (hasSsh) return true;
  const close = base.lastIndexOf('</zone>');
  if (close < 0) {
    plan.warn(`firewalld: ${etcPath} has no </zone>; SSH not opened`);
    return true;
  }
  const after = `${base.slice(0, close)}  <service name="ssh"/>\n${base.slice(close)}`;
  const why = `firewalld: allow the ssh service in the default zone (${zone}) so SSH reaches the VM on Azure`;
  // A vendor zone is copied to /etc with the change, which is how firewall-cmd --permanent does it.
  if (etcRef) plan.edit(etcRef, after, why);
  else await plan.create(etcPath, after, 0o644, why);
  return true;
}

async function fixFirewalls(plan: Plan): Promise<FirewallStyle[]> {
  const found: FirewallStyle[] = [];
  for (const [p, v6] of [
    ['/etc/ufw/user.rules', false],
    ['/etc/ufw/user6.rules', true],
  ] as const) {
    const ref = await plan.file(p);
    if (!ref) continue;
    if (!found.includes('ufw')) found.push('ufw');
    fixUfw(plan, ref, v6);
  }
  if (await fixFirewalld(plan)) found.push('firewalld');
  for (const p of ['/etc/iptables/rules.v4', '/etc/iptables/rules.v6', '/etc/sysconfig/iptables', '/etc/sysconfig/ip6tables']) {
    const ref = await plan.file(p);
    if (!ref) continue;
    if (!found.includes('iptables')) found.push('iptables');
    fixIptables(plan, ref);
  }
  return found;
}

// ---------------------------------------------------------------------------------------------------
// Network

async function fixUdevNetRules(plan: Plan): Promise<void> {
  const rules70 = '/etc/udev/rules.d/70-persistent-net.rules';
  const gen75 = '/etc/udev/rules.d/75-persistent-net-generator.rules';
  await plan.lstatMany([rules70, gen75]);
  if (await plan.lstat(rules70)) {
    await plan.remove(rules70, 'remove NIC names pinned to VMware MAC addresses; the Azure NIC must come up as eth0');
  }
  const st = await plan.lstat(gen75);
  if (!(st?.type === 'symlink' && st.linkTarget === '/dev/null')) {
    await plan.symlink(gen75, '/dev/null', 'mask the persistent net rules generator so it does not pin the Azure NIC MAC');
  }
}

/** A netplan file with a static address (CIDR) or gateway would be merged into eth0's DHCP config. */
function netplanHasStatic(text: string): boolean {
  return (
    /^\s*(-\s*)?["']?[0-9a-fA-F:.]+\/\d{1,3}["']?\s*$/m.test(text) ||
    /addresses:\s*\[[^\]]*\/\d/.test(text) ||
    /^\s*gateway[46]:/m.test(text)
  );
}

async function fixNetplan(plan: Plan): Promise<void> {
  const entries = (await plan.list('/etc/netplan')) ?? [];
  // The first NIC is eth0 on any bus (net.ifnames=0 on the kernel command line): hv_netvsc on Azure,
  // virtio or another PCI NIC elsewhere; a match by driver would miss those.
  const ours = `# Written by vmrestore for Azure: DHCP on the first NIC, eth0 through net.ifnames=0.
network:
  version: 2
  ethernets:
    ${AZURE_NIC}:
      match:
        name: ${AZURE_NIC}
      dhcp4: true
`;
  const others = entries
    .filter((e) => e.name.endsWith('.yaml') && `/etc/netplan/${e.name}` !== NETPLAN_FILE)
    .map((e) => `/etc/netplan/${e.name}`);
  await plan.prefetch(others);
  for (const p of others) {
    const ref = await plan.file(p);
    if (!ref || !netplanHasStatic(ref.text)) continue;
    const parked = `${p}${DISABLED_SUFFIX}`;
    if (!followAllowed(ref)) {
      plan.warn(
        `${p} is a symlink to ${describePath(ref.hops[1] ?? ref.path)}; not followed, left in place (it may add static addresses to eth0)`,
      );
      continue;
    }
    await plan.create(parked, ref.bytes, ref.stat.mode, `copy of ${p}, kept for reference`);
    await plan.remove(
      p,
      `park the VMware-era static addresses (netplan would merge them into the Azure NIC's DHCP config); kept as ${parked}`,
    );
  }
  // netplan warns about world-readable configs, hence 0600.
  await plan.create(NETPLAN_FILE, ours, 0o600, `DHCP on ${AZURE_NIC}: Azure assigns the VM's addresses by DHCP`);
}

function setShellVars(text: string, set: Record<string, string>, drop: RegExp): string {
  const lines = text.replace(/\n$/, '').split('\n');
  const seen = new Set<string>();
  const out: string[] = [];
  for (const line of lines) {
    const m = /^\s*([A-Za-z_][A-Za-z0-9_]*)=/.exec(line);
    if (m && drop.test(m[1])) continue;
    if (m && m[1] in set) {
      if (seen.has(m[1])) continue;
      seen.add(m[1]);
      out.push(`${m[1]}=${set[m[1]]}`);
      continue;
    }
    out.push(line);
  }
  for (const [k, v] of Object.entries(set)) if (!seen.has(k)) out.push(`${k}=${v}`);
  return out.join('\n') + '\n';
}

async function fixIfcfg(plan: Plan): Promise<void> {
  const p = `/etc/sysconfig/network-scripts/ifcfg-${AZURE_NIC}`;
  const ref = await plan.file(p);
  const want = { DEVICE: AZURE_NIC, BOOTPROTO: 'dhcp', ONBOOT: 'yes' };
  // Static addressing, the old MAC binding and on-premises DNS would keep eth0 off Azure's network;
  // DHCP supplies address, route and resolvers.
  const drop = /^(IPADDR\d*|NETMASK\d*|PREFIX\d*|GATEWAY\d*|HWADDR|MACADDR|DNS\d+|PEERDNS)$/;
  if (ref) {
    plan.edit(ref, setShellVars(ref.text, want, drop), `DHCP on ${AZURE_NIC}, without the static address, DNS and MAC binding`);
  } else {
    const content = [
      '# Written by vmrestore for Azure: DHCP on the first NIC.',
      `DEVICE=${AZURE_NIC}`,
      `NAME=${AZURE_NIC}`,
      'TYPE=Ethernet',
      'BOOTPROTO=dhcp',
      'ONBOOT=yes',
      'DEFROUTE=yes',
      'IPV6INIT=no',
      'PERSISTENT_DHCLIENT=yes',
      'NM_CONTROLLED=yes',
      '',
    ].join('\n');
    await plan.create(p, content, 0o644, `DHCP on ${AZURE_NIC}: Azure assigns the VM's addresses by DHCP`);
  }
  const net = await plan.file('/etc/sysconfig/network');
  if (net) {
    plan.edit(net, setShellVars(net.text, {}, /^(GATEWAY|GATEWAYDEV)$/), 'drop the global on-premises gateway; DHCP provides the route');
  }
}

/** A .network file that gives its link a static address or route (the VMware-era configuration). */
function networkdHasStatic(text: string): boolean {
  return /^\s*(Address|Gateway)\s*=/m.test(text) || /^\s*\[(Address|Route)\]/m.test(text);
}

/**
 * systemd-networkd guests: the static .network files are parked (renamed, kept for reference) and one file
 * brings up DHCP on the primary NIC by type and name pattern, whatever the kernel calls it, except a VF
 * of accelerated networking (Mellanox, MANA), which is bonded to the synthetic NIC and must not run DHCP.
 * Returns whether the guest uses networkd.
 */
async function fixNetworkd(plan: Plan, family: LinuxFamily): Promise<boolean> {
  const dir = '/etc/systemd/network';
  const entries = (await plan.list(dir)) ?? [];
  const files = entries.filter((e) => e.name.endsWith('.network')).map((e) => `${dir}/${e.name}`);
  const wants = `${SYSTEMD_ETC}/multi-user.target.wants/systemd-networkd.service`;
  await plan.lstatMany([wants]);
  if (!files.length && !(await plan.lstat(wants))) return false;
  await plan.prefetch(files);
  for (const p of files.filter((f) => f !== NETWORKD_FILE)) {
    const ref = await plan.file(p);
    if (!ref || !networkdHasStatic(ref.text)) continue;
    const parked = `${p}${DISABLED_SUFFIX}`;
    if (!followAllowed(ref)) {
      plan.warn(
        `${p} is a symlink to ${describePath(ref.hops[1] ?? ref.path)}; not followed, left in place (it may give a NIC a static address)`,
      );
      continue;
    }
    await plan.create(parked, ref.bytes, ref.stat.mode, `copy of ${p}, kept for reference`);
    await plan.remove(p, `park the VMware-era static address (systemd-networkd would still apply it); kept as ${parked}`);
  }
  const ours = [
    "# Written by vmrestore for Azure: DHCP on the VM's primary NIC, whatever name the kernel gives it.",
    '[Match]',
    'Type=ether',
    'Name=eth* en*',
    '# The VF of accelerated networking is bonded to the synthetic NIC and must not run DHCP of its own.',
    'Driver=!mlx4_core mlx4_en mlx5_core mana',
    '',
    '[Network]',
    'DHCP=ipv4',
    'LinkLocalAddressing=no',
    '',
  ].join('\n');
  await plan.create(
    NETWORKD_FILE,
    ours,
    0o644,
    'systemd-networkd: DHCP on the primary NIC matched by type (ether) and name (eth*, en*), not by its VMware-era name',
  );
  await enableUnit(plan, family, ['systemd-networkd.service'], 'it brings up DHCP on the primary NIC');
  return true;
}

const IFACE_KEYWORDS = /^\s*(iface|mapping|auto|allow-\S+|source|source-directory|no-auto-down|no-scripts|rename)\b/;
const STATIC_OPTIONS = /^\s*(address|netmask|gateway|broadcast|network|pointopoint|hwaddress|scope|metric|dns-\S+)\b/;
const STATIC_IFACE = /^\s*iface\s+(\S+)\s+inet6?\s+static\b/;

/** Names with a static stanza other than lo and the Azure NIC: the VMware-era NICs (ens192, ...). */
function staticIfaceNames(text: string): string[] {
  const names = new Set<string>();
  for (const l of text.split('\n')) {
    const m = STATIC_IFACE.exec(l);
    if (m && m[1] !== 'lo' && m[1] !== AZURE_NIC) names.add(m[1]);
  }
  return [...names];
}

/**
 * Comments out (with DISABLED_MARK) the static stanzas of `names` and their options, and takes those
 * names off `auto`/`allow-*` lines, so ifupdown no longer brings them up. Lines are changed in place.
 */
function disableStanzas(lines: string[], names: Set<string>): void {
  for (let i = 0; i < lines.length; i++) {
    const m = STATIC_IFACE.exec(lines[i]);
    if (m && names.has(m[1])) {
      lines[i] = DISABLED_MARK + lines[i];
      for (let j = i + 1; j < lines.length && !IFACE_KEYWORDS.test(lines[j]); j++) {
        if (lines[j].trim() && !lines[j].trim().startsWith('#')) lines[j] = DISABLED_MARK + lines[j];
      }
      continue;
    }
    const auto = /^(\s*)(auto|allow-\S+)\s+(.*)$/.exec(lines[i]);
    if (!auto) continue;
    const ifaces = auto[3].trim().split(/\s+/);
    const keep = ifaces.filter((n) => !names.has(n));
    if (keep.length === ifaces.length) continue;
    lines[i] = keep.length ? `${auto[1]}${auto[2]} ${keep.join(' ')}` : DISABLED_MARK + lines[i];
  }
}

async function fixInterfaces(plan: Plan): Promise<void> {
  const ref = await plan.file('/etc/network/interfaces');
  if (!ref) return;
  // Stanzas may also live in interfaces.d (Debian's default file sources it).
  const parts = ((await plan.list('/etc/network/interfaces.d')) ?? [])
    .filter((e) => e.type === 'regular')
    .map((e) => `/etc/network/interfaces.d/${e.name}`);
  await plan.prefetch(parts);
  const partRefs = (await Promise.all(parts.map((p) => plan.file(p)))).filter((r): r is FileRef => r !== null);
  const names = new Set([ref, ...partRefs].flatMap((r) => staticIfaceNames(r.text)));
  const disabled = names.size ? `; the VMware-era static stanza of ${[...names].join(', ')} commented out ('vmrestore-disabled')` : '';
  for (const part of partRefs) {
    const pl = part.text.split('\n');
    disableStanzas(pl, names);
    plan.edit(
      part,
      pl.join('\n'),
      `ifupdown: the VMware-era static stanza of ${[...names].join(', ')} commented out ('vmrestore-disabled')`,
    );
  }
  const lines = ref.text.replace(/\n$/, '').split('\n');
  disableStanzas(lines, names);
  const ifaceRe = new RegExp(`^(\\s*iface\\s+${AZURE_NIC}\\s+inet\\s+)(\\S+)(.*)$`);
  const i = lines.findIndex((l) => ifaceRe.test(l));
  if (i >= 0) {
    const m = ifaceRe.exec(lines[i])!;
    if (m[2] !== 'dhcp') {
      lines[i] = `${m[1]}dhcp${m[3]}`;
      for (let j = i + 1; j < lines.length && !IFACE_KEYWORDS.test(lines[j]); ) {
        if (STATIC_OPTIONS.test(lines[j])) lines.splice(j, 1);
        else j++;
      }
    }
    const autoRe = new RegExp(`^\\s*(auto|allow-hotplug)\\s+(.*\\s)?${AZURE_NIC}(\\s|$)`);
    if (!lines.some((l) => autoRe.test(l))) lines.splice(i, 0, `auto ${AZURE_NIC}`);
  } else {
    lines.push('', '# Added by vmrestore for Azure: DHCP on the first NIC.', `auto ${AZURE_NIC}`, `iface ${AZURE_NIC} inet dhcp`);
  }
  plan.edit(
    ref,
    lines.join('\n') + '\n',
    `DHCP on ${AZURE_NIC}, the first NIC's name on any bus with net.ifnames=0 on the kernel command line: Azure assigns the VM's addresses by DHCP${disabled}`,
  );
}

// ---------------------------------------------------------------------------------------------------
// fstab

/** Device names that belong to the old virtual bus and will change or vanish on Azure. */
const BUS_DEVICE = /^\/dev\/(sd|hd|vd|xvd)([a-z]+)(\d*)$/;

/** 0 for `a`, 25 for `z`, 26 for `aa`: the disk's position behind a bus device name (sdb → 1). */
function diskNumber(letters: string): number {
  return [...letters].reduce((n, c) => n * 26 + (c.charCodeAt(0) - 96), 0) - 1;
}

async function fixFstab(
  plan: Plan,
  root: LinuxRoot,
  imagePath: string,
  known: Set<string> | null,
  dataDisks: DataDiskFilesystems[] | undefined,
): Promise<void> {
  const ref = await plan.file('/etc/fstab');
  if (!ref) return;
  const lines = ref.text.split('\n');
  const fields = (l: string) => l.trim().split(/\s+/);
  const isEntry = (l: string) => l.trim() !== '' && !l.trim().startsWith('#') && fields(l).length >= 2;
  const rootLine = lines.find((l) => isEntry(l) && fields(l)[1] === '/');
  const rootDisk = rootLine ? BUS_DEVICE.exec(fields(rootLine)[0]) : null;
  const osDisk = rootDisk ? `${rootDisk[1]}${rootDisk[2]}` : 'sda';
  const osBus = rootDisk ? rootDisk[1] : 'sd';
  const osNumber = diskNumber(rootDisk ? rootDisk[2] : 'a');

  const uuidCache = new Map<number, string | null>();
  const partitionUuid = async (n: number): Promise<string | null> => {
    if (!uuidCache.has(n)) {
      const part = root.table?.partitions.find((p) => p.index === n);
      const fs = part ? await probeFilesystem(imagePath, part.startBytes) : null;
      uuidCache.set(n, fs && /^[0-9a-fA-F-]+$/.test(fs.uuid) ? fs.uuid : null);
    }
    return uuidCache.get(n)!;
  };

  const notes: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (!isEntry(line)) continue;
    const f = fields(line);
    const [device, mountPoint, type = '', options = 'defaults'] = f;
    const opts = options.split(',');
    if (/^(nfs4?|cifs|smbfs|smb3|glusterfs|ceph|sshfs|fuse\..*|9p|tmpfs|proc|sysfs|devpts)$/.test(type)) continue;
    if (opts.includes('bind') || opts.includes('noauto')) continue;

    let newDevice = device;
    let dataDisk = false;
    const bus = BUS_DEVICE.exec(device);
    if (mountPoint === '/') {
      if (bus || device.startsWith('/dev/disk/by-')) newDevice = `UUID=${root.filesystem.uuid}`;
    } else if (bus && `${bus[1]}${bus[2]}` === osDisk && bus[3]) {
      const uuid = await partitionUuid(Number(bus[3]));
      if (uuid) newDevice = `UUID=${uuid}`;
    } else if (bus && bus[1] === osBus && dataDisks) {
      // On VMware the disks sit on the bus in the VM's order: sdb is data disk 1. On Azure sdb is the
      // temporary resource disk, so the entry must name the filesystem, not the device.
      const disk = dataDisks.find((d) => d.diskIndex === diskNumber(bus[2]) - osNumber);
      const fs = disk?.filesystems.find((x) => x.partition === (bus[3] ? Number(bus[3]) : 0));
      if (fs) {
        newDevice = `UUID=${fs.uuid}`;
        dataDisk = true;
      }
    }
    const converted = newDevice !== device;
    let missing = false;
    if (mountPoint !== '/' && !converted) {
      if (bus || device.startsWith('/dev/disk/by-path/') || device.startsWith('/dev/disk/by-id/')) missing = true;
      const uuid = /^UUID=["']?([^"']+)["']?$/.exec(device);
      if (uuid && known && !known.has(uuid[1].toLowerCase())) missing = true;
    }
    // A data disk that is late or missing must not stop the boot (Azure attaches data disks separately).
    const addNofail = (missing || dataDisk) && !opts.includes('nofail');
    if (!converted && !addNofail) continue;

    // Replace fields in place so the file keeps its column alignment and comments.
    let out = line;
    if (converted) {
      out = out.replace(device, newDevice);
      notes.push(`${device} → ${newDevice}`);
    }
    if (addNofail) {
      if (f.length >= 4) {
        out = out.replace(
          new RegExp(`(\\s${escapeRe(mountPoint)}\\s+${escapeRe(type)}\\s+)${escapeRe(options)}(?=\\s|$)`),
          `$1${options},nofail`,
        );
      } else {
        out = `${out.trimEnd()}${f.length === 3 ? '' : ' auto'} defaults,nofail`;
      }
      notes.push(`nofail on ${mountPoint}`);
    }
    lines[i] = out;
  }
  if (!notes.length) return;
  plan.edit(ref, lines.join('\n'), `fstab for Azure's disk layout (/dev/sdb is the temporary disk there): ${notes.join(', ')}`);
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---------------------------------------------------------------------------------------------------
// Kernel command line

function hasArg(args: string[], want: string): boolean {
  const key = want.split('=')[0];
  // Any console on the first serial port will do, whatever its speed.
  if (key === 'console' || key === 'earlyprintk')
    return args.some((a) => a === want.split(',')[0] || a.startsWith(`${want.split(',')[0]},`));
  return args.some((a) => a.split('=')[0] === key);
}

/** The guest's initramfs generator, which decides what a root-device wait on the kernel line does. */
export type InitramfsTool = 'initramfs-tools' | 'dracut' | 'unknown';

/** What the kernel command line edits do for this guest. */
interface ArgPolicy {
  rootUuid: string;
  /** initramfs-tools sleeps `rootdelay` seconds unconditionally: an existing one is taken out. */
  dropRootdelay: boolean;
}

const ROOTDELAY = /(^|\s)rootdelay=\S*(?=\s|$)/g;
/**
 * Arguments that hide the boot from the serial console: with `quiet` the kernel and systemd print nothing
 * there, so Azure's boot diagnostics stay empty until a login prompt (and show nothing of a boot that
 * fails); `splash` and `rhgb` draw a graphical screen instead. Azure's preparation guides remove them.
 */
const SILENT = /(^|\s)(quiet|splash|rhgb)(?=\s|$)/g;

/**
 * Adds the Azure kernel arguments that are missing, points `root=/dev/sdXN` at the root filesystem's
 * UUID since disk names differ on Azure, and on initramfs-tools guests removes `rootdelay`, which delays
 * every boot by its value. Returns args unchanged when nothing is needed.
 */
function fixArgs(args: string, k: ArgPolicy): string {
  let out = args.replace(/(^|\s)root=\/dev\/(?:sd|hd|vd|xvd)[a-z]+\d+(?=\s|$)/, `$1root=UUID=${k.rootUuid}`);
  if (k.dropRootdelay) out = out.replace(ROOTDELAY, '');
  const loud = out.replace(SILENT, '');
  if (loud !== out) out = loud.replace(/^\s+/, '');
  const list = out.split(/\s+/).filter(Boolean);
  const missing = KERNEL_ARGS.filter((a) => !hasArg(list, a));
  if (missing.length) out = [out.trimEnd(), ...missing].filter(Boolean).join(' ');
  return out;
}

function argsWhy(where: string, before: string, after: string): string {
  // Arguments sit in quoted shell values and config lines: quotes end them too.
  const tokens = (t: string) => t.split(/[\s"']+/);
  const count = (t: string, a: string) => tokens(t).filter((x) => x === a).length;
  const delays = (t: string) => tokens(t).filter((x) => x.startsWith('rootdelay=')).length;
  const silent = (t: string) => tokens(t).filter((x) => x === 'quiet' || x === 'splash' || x === 'rhgb').length;
  const added = KERNEL_ARGS.filter((a) => count(after, a) > count(before, a));
  const parts = added.length
    ? [
        `add ${added.join(' ')} (serial console on ttyS0 for Azure's boot diagnostics from the first kernel message; ` +
          'net.ifnames=0: the first NIC is eth0 on any bus, so DHCP comes up on it)',
      ]
    : [];
  if (silent(before) > silent(after)) {
    parts.push("remove quiet/splash/rhgb (the boot shows on the serial console, in Azure's boot diagnostics)");
  }
  if (delays(before) > delays(after)) {
    parts.push('remove rootdelay (initramfs-tools sleeps that long on every boot; it waits up to 30 s for a late root device by itself)');
  }
  if ((after.match(/root=UUID=/g) ?? []).length > (before.match(/root=UUID=/g) ?? []).length) {
    parts.push('root= by filesystem UUID (disk names differ on Azure)');
  }
  return `${where}: ${parts.join('; ')}`;
}

function fixDefaultGrub(plan: Plan, ref: FileRef, k: ArgPolicy): void {
  const lines = ref.text.split('\n');
  // The shell sources the file, so the last assignment wins.
  let idx = -1;
  lines.forEach((l, i) => {
    if (/^\s*GRUB_CMDLINE_LINUX=/.test(l)) idx = i;
    // The default entry's extra arguments: only the ones that silence the boot come out.
    const d = /^(\s*GRUB_CMDLINE_LINUX_DEFAULT=)(["']?)(.*?)\2\s*$/.exec(l);
    if (d && d[3].replace(SILENT, '') !== d[3]) lines[i] = `${d[1]}${d[2] || '"'}${d[3].replace(SILENT, '').trim()}${d[2] || '"'}`;
  });
  if (idx >= 0) {
    const m = /^(\s*GRUB_CMDLINE_LINUX=)(["']?)(.*?)\2\s*$/.exec(lines[idx]);
    if (!m) {
      plan.warn(`${ref.path}: could not parse its GRUB_CMDLINE_LINUX line (line ${idx + 1}); kernel command line not changed there`);
      return;
    }
    const quote = m[2] || '"';
    lines[idx] = `${m[1]}${quote}${fixArgs(m[3], k)}${quote}`;
  } else {
    const at = lines.length && lines[lines.length - 1] === '' ? lines.length - 1 : lines.length;
    lines.splice(at, 0, `GRUB_CMDLINE_LINUX="${KERNEL_ARGS.join(' ')}"`);
  }
  plan.edit(ref, lines.join('\n'), argsWhy('GRUB_CMDLINE_LINUX', ref.text, lines.join('\n')));
}

/** grub.cfg is what boots before anyone runs update-grub, so its kernel lines get the args too. */
function fixGrubCfg(plan: Plan, ref: FileRef, k: ArgPolicy): void {
  const after = ref.text
    .split('\n')
    .map((l) => {
      const m = /^(\s*(?:linux|linux16|linuxefi)\s+\S+)(.*)$/.exec(l);
      return m ? `${m[1]}${fixArgs(m[2], k).replace(/^(?!\s)/, ' ')}` : l;
    })
    .join('\n');
  plan.edit(ref, after, argsWhy('grub.cfg kernel lines (used before update-grub runs)', ref.text, after));
}

/** EL8 BLS entries take `$kernelopts` from grubenv, a fixed 1024-byte block padded with '#'. */
function fixGrubenv(plan: Plan, ref: FileRef, k: ArgPolicy): void {
  const m = /^kernelopts=(.*)$/m.exec(ref.text);
  if (!m) return;
  const args = fixArgs(m[1].trimEnd(), k);
  if (args === m[1].trimEnd()) return;
  const body = ref.text.replace(/#+$/, '').replace(/^kernelopts=.*$/m, `kernelopts=${args} `);
  if (Buffer.byteLength(body) > 1024) {
    plan.warn(`${ref.path}: no room left in the 1 KiB environment block for ${KERNEL_ARGS.join(' ')}`);
    return;
  }
  plan.edit(
    ref,
    body + '#'.repeat(1024 - Buffer.byteLength(body)),
    argsWhy('grubenv kernelopts (used by the BLS boot entries)', ref.text, body),
  );
}

function fixBlsEntry(plan: Plan, ref: FileRef, k: ArgPolicy): void {
  const after = ref.text
    .split('\n')
    .map((l) => {
      const m = /^(options\s+)(.*)$/.exec(l);
      // Entries reading $kernelopts are covered by grubenv.
      if (!m || m[2].includes('$kernelopts')) return l;
      return `${m[1]}${fixArgs(m[2], k)}`;
    })
    .join('\n');
  plan.edit(ref, after, argsWhy('boot entry options', ref.text, after));
}

/** initramfs-tools and dracut each leave their files in the guest; neither means an unknown generator. */
async function detectInitramfsTool(plan: Plan): Promise<InitramfsTool> {
  const marks = ['/usr/share/initramfs-tools/init', '/usr/lib/dracut/dracut-version.sh', '/usr/lib/dracut/modules.d', '/etc/dracut.conf'];
  await plan.lstatMany(marks);
  if (await plan.lstat(marks[0])) return 'initramfs-tools';
  for (const m of marks.slice(1)) if (await plan.lstat(m)) return 'dracut';
  return 'unknown';
}

async function fixKernelCommandLine(plan: Plan, rootUuid: string): Promise<void> {
  const initramfs = await detectInitramfsTool(plan);
  const k: ArgPolicy = { rootUuid, dropRootdelay: initramfs === 'initramfs-tools' };
  const def = await plan.file('/etc/default/grub');
  if (def) fixDefaultGrub(plan, def, k);
  else if (!(await plan.lstat('/etc/default/grub'))) plan.warn('/etc/default/grub not found; kernel command line not changed');
  for (const p of ['/boot/grub/grub.cfg', '/boot/grub2/grub.cfg']) {
    const ref = await plan.file(p);
    if (ref) fixGrubCfg(plan, ref, k);
  }
  for (const p of ['/boot/grub2/grubenv', '/boot/grub/grubenv']) {
    const ref = await plan.file(p);
    if (ref) fixGrubenv(plan, ref, k);
  }
  const entries = (await plan.list('/boot/loader/entries')) ?? [];
  let confs = entries.filter((e) => e.name.endsWith('.conf')).map((e) => `/boot/loader/entries/${e.name}`);
  if (confs.length > MAX_BOOT_ENTRIES) {
    plan.warn(`/boot/loader/entries holds ${confs.length} entries; only the first ${MAX_BOOT_ENTRIES} are prepared`);
    confs = confs.slice(0, MAX_BOOT_ENTRIES);
  }
  await plan.prefetch(confs);
  for (const p of confs) {
    const ref = await plan.file(p);
    if (ref) fixBlsEntry(plan, ref, k);
  }
}

// ---------------------------------------------------------------------------------------------------
// Agents

async function fixAgents(plan: Plan, family: LinuxFamily): Promise<void> {
  const agent = await enableUnit(plan, family, AGENT_UNITS, 'the Azure Linux agent reports readiness and runs extensions');
  if (!agent) plan.warn('Azure Linux agent (WALinuxAgent) is not installed; install it for provisioning and extensions');
  const dirs = vendorUnitDirs(family);
  await plan.prefetch(CLOUD_INIT_UNITS.flatMap((u) => dirs.map((d) => `${d}/${u}`)));
  let cloudInit = false;
  for (const unit of CLOUD_INIT_UNITS) {
    if (await enableUnit(plan, family, [unit], 'cloud-init applies Azure provisioning data')) cloudInit = true;
  }
  const marker = '/etc/cloud/cloud-init.disabled';
  if (cloudInit && (await plan.lstat(marker))) {
    await plan.remove(marker, 'cloud-init is skipped at boot while this marker exists');
  }
}

// ---------------------------------------------------------------------------------------------------
// Entry points

/** Paths most fixers read, fetched in one batch up front (each debugfs start costs a process). */
const PREFETCH = [
  '/etc/os-release',
  '/etc/fstab',
  '/etc/default/grub',
  '/boot/grub/grub.cfg',
  '/boot/grub2/grub.cfg',
  '/boot/grub2/grubenv',
  '/boot/grub/grubenv',
  '/etc/ufw/user.rules',
  '/etc/ufw/user6.rules',
  '/etc/firewalld/firewalld.conf',
  '/etc/firewalld/zones/public.xml',
  '/etc/iptables/rules.v4',
  '/etc/iptables/rules.v6',
  '/etc/sysconfig/iptables',
  '/etc/sysconfig/ip6tables',
  '/etc/network/interfaces',
  '/etc/sysconfig/network',
  `/etc/sysconfig/network-scripts/ifcfg-${AZURE_NIC}`,
  NETPLAN_FILE,
];

async function makePlan(imagePath: string, opts: LinuxPrepOptions) {
  const root = await findLinuxRoot(imagePath, opts);
  const p = new Plan(new Ext4Volume(imagePath, root.partitionOffset));
  const family = await (async () => {
    await p.prefetch(PREFETCH);
    return detectFamily(p);
  })();
  const dirs = vendorUnitDirs(family.family);
  await p.prefetch([...SSH_UNITS, ...AGENT_UNITS].flatMap((u) => [`${SYSTEMD_ETC}/${u}`, ...dirs.map((d) => `${d}/${u}`)]));
  await p.lstatMany([
    '/etc/udev/rules.d/70-persistent-net.rules',
    '/etc/udev/rules.d/75-persistent-net-generator.rules',
    '/etc/sysconfig/network-scripts',
    ...[...SSH_UNITS, ...AGENT_UNITS].flatMap((u) => [`${SYSTEMD_ETC}/${u}`, `${SYSTEMD_ETC}/multi-user.target.wants/${u}`]),
  ]);

  const ssh = await enableUnit(p, family.family, SSH_UNITS, 'SSH is the way into a Linux VM on Azure');
  if (!ssh) p.warn('OpenSSH server is not installed; the VM will not be reachable by SSH');
  const firewalls = await fixFirewalls(p);
  await fixUdevNetRules(p);
  const networkStyle = await detectNetworkStyle(p, family.family);
  if (networkStyle === 'netplan') await fixNetplan(p);
  else if (networkStyle === 'ifcfg') await fixIfcfg(p);
  else if (networkStyle === 'interfaces') await fixInterfaces(p);
  // netplan renders to networkd itself; other guests may run networkd beside or instead of ifupdown.
  const networkd = networkStyle !== 'netplan' && (await fixNetworkd(p, family.family));
  if (!networkStyle && !networkd)
    p.warn('no netplan, ifcfg, /etc/network/interfaces or systemd-networkd configuration found; DHCP not configured');
  // With the data disks known, every disk of the VM is: a UUID= entry naming none of them gets nofail.
  const knownList = opts.dataDisks
    ? [
        ...(opts.knownFilesystemUuids ?? []),
        ...[...(await dataDiskFilesystems([imagePath])), ...opts.dataDisks].flatMap((d) => d.filesystems.map((f) => f.uuid)),
      ]
    : opts.knownFilesystemUuids;
  const known = knownList ? new Set(knownList.map((u) => u.toLowerCase())) : null;
  await fixFstab(p, root, imagePath, known, opts.dataDisks);
  await fixKernelCommandLine(p, root.filesystem.uuid);
  await fixAgents(p, family.family);
  return { root, p, family, networkStyle, firewalls };
}

/**
 * Prepares the Linux root filesystem in a whole-disk image for Azure and returns what it changed,
 * plus detection results and warnings. Idempotent: a second run returns no changes.
 */
export async function prepareLinuxDiskDetailed(imagePath: string, opts: LinuxPrepOptions = {}): Promise<LinuxPrepResult> {
  const { root, p, family, networkStyle, firewalls } = await makePlan(imagePath, opts);
  await p.enforceNoDirectorySymlinks();
  await p.vol.apply(p.ops);
  return { root, ...family, networkStyle, firewalls, changes: p.changes, warnings: p.warnings };
}

/** What prepareLinuxDisk would change, without writing anything. */
export async function inspectLinuxDisk(imagePath: string, opts: LinuxPrepOptions = {}): Promise<LinuxPrepResult> {
  const { root, p, family, networkStyle, firewalls } = await makePlan(imagePath, opts);
  await p.enforceNoDirectorySymlinks();
  return { root, ...family, networkStyle, firewalls, changes: p.changes, warnings: p.warnings };
}

/** prepareLinuxDiskDetailed, returning only the changes (an empty list when nothing needed doing). */
export async function prepareLinuxDisk(imagePath: string, opts: LinuxPrepOptions = {}): Promise<GuestChange[]> {
  return (await prepareLinuxDiskDetailed(imagePath, opts)).changes;
}
