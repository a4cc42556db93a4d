import { describePath } from './ext4';
import { type FileRef, followAllowed, Plan } from './plan';
import type { LinuxFamily } from './types';
import { enableUnit, SYSTEMD_ETC } from './units';

// Network: DHCP on eth0, no VMware-era NIC naming or static addresses.

export const AZURE_NIC = 'eth0';
/** Marks lines preparation commented out, so a reader (and a second run) can tell them apart. */
const DISABLED_MARK = '# vmrestore-disabled: ';
const NETWORKD_FILE = '/etc/systemd/network/05-vmrestore-azure-dhcp.network';
export const NETPLAN_FILE = '/etc/netplan/90-vmrestore-azure-dhcp.yaml';
const DISABLED_SUFFIX = '.vmrestore-disabled';

export async function fixUdevNetRules(plan: Plan): Promise<void> {
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

export async function fixNetplan(plan: Plan): Promise<void> {
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

export async function fixIfcfg(plan: Plan): Promise<void> {
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
export async function fixNetworkd(plan: Plan, family: LinuxFamily): Promise<boolean> {
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

export async function fixInterfaces(plan: Plan): Promise<void> {
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
