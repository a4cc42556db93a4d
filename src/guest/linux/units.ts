import { describePath } from './ext4';
import { Plan } from './plan';
import type { LinuxFamily } from './types';

// systemd units: enabling SSH, the Azure agent and cloud-init.

export const SYSTEMD_ETC = '/etc/systemd/system';

/** systemd unit names (systemd.unit(5)): at most 255 characters of [A-Za-z0-9:_.\\@-] with a unit type suffix. */
function isUnitName(s: string): boolean {
  return (
    s.length <= 255 &&
    /^[A-Za-z0-9:_.\\@-]+\.(service|socket|target|device|mount|automount|swap|path|timer|slice|scope)$/.test(s) &&
    !s.startsWith('.') &&
    !s.includes('..')
  );
}

export const SSH_UNITS = ['ssh.service', 'sshd.service'];
export const AGENT_UNITS = ['walinuxagent.service', 'waagent.service'];
const CLOUD_INIT_UNITS = [
  'cloud-init-local.service',
  'cloud-init.service',
  'cloud-config.service',
  'cloud-final.service',
  'cloud-init.target',
];

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

export function vendorUnitDirs(family: LinuxFamily): string[] {
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
export async function enableUnit(plan: Plan, family: LinuxFamily, names: string[], why: string): Promise<string | null> {
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

export async function fixAgents(plan: Plan, family: LinuxFamily): Promise<void> {
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
