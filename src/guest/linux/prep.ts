import { Ext4Volume } from './ext4';
import type { GuestChange } from '../types';
import { fixKernelCommandLine } from './boot';
import { detectFamily, detectNetworkStyle } from './detect';
import { fixFirewalls } from './firewall';
import { fixFstab } from './fstab';
import { AZURE_NIC, fixIfcfg, fixInterfaces, fixNetplan, fixNetworkd, fixUdevNetRules, NETPLAN_FILE } from './network';
import { Plan } from './plan';
import { dataDiskFilesystems, findLinuxRoot } from './root';
import type { LinuxPrepOptions, LinuxPrepResult } from './types';
import { AGENT_UNITS, enableUnit, fixAgents, SSH_UNITS, SYSTEMD_ETC, vendorUnitDirs } from './units';

export { dataDiskFilesystems, findLinuxRoot, readGuestFile } from './root';
export type * from './types';

/**
 * Prepares a Linux guest disk for Azure by editing its ext4 root filesystem in the image (debugfs, no
 * mount), following the Azure Migrate/ASR hydration list: sshd on, SSH through the firewall, no
 * VMware-era NIC naming or static addresses, DHCP on eth0, fstab that survives the new disk names,
 * serial console on the kernel command line, Azure agent on.
 *
 * Every edit is computed first by comparing current and desired content, then all are applied in one
 * debugfs run. A file already in the desired state produces no change, so a second run returns [].
 */

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
