import type { Plan } from './plan';
import type { LinuxFamily, NetworkStyle } from './types';

// Distro and network style detection.

export function parseShellVars(text: string): Map<string, string> {
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

export async function detectFamily(plan: Plan): Promise<{ family: LinuxFamily; osName: string }> {
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

export async function detectNetworkStyle(plan: Plan, family: LinuxFamily): Promise<NetworkStyle | null> {
  const netplan = await plan.list('/etc/netplan');
  if (netplan && (family === 'ubuntu' || netplan.some((e) => e.name.endsWith('.yaml')))) return 'netplan';
  // Followed for detection only; edits below a symlinked directory are dropped (see followAllowed).
  const scripts = (await plan.vol.resolveMany(['/etc/sysconfig/network-scripts'])).get('/etc/sysconfig/network-scripts');
  if (scripts?.stat.type === 'directory') return 'ifcfg';
  if (await plan.file('/etc/network/interfaces')) return 'interfaces';
  return null;
}
