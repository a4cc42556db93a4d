import { describePath } from './ext4';
import { parseShellVars } from './detect';
import { type FileRef, Plan } from './plan';
import type { FirewallStyle } from './types';

// Firewalls: letting SSH in (ufw, iptables, firewalld).

/** firewalld zone names: letters, digits, `_`, `-`, `+`, at most 64 (firewalld itself allows 17 for nftables). */
function isZoneName(s: string): boolean {
  return /^[A-Za-z0-9_+-]{1,64}$/.test(s);
}

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

export async function fixFirewalls(plan: Plan): Promise<FirewallStyle[]> {
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
