import { type FileRef, Plan } from './plan';
import type { InitramfsTool } from './types';

// Kernel command line: serial console, kernel NIC names, no rootdelay sleep.

/**
 * Kernel arguments for Azure: the serial console (boot diagnostics and the serial console need ttyS0,
 * from the first kernel message on) and the kernel's own NIC names (net.ifnames=0), so that the VM's
 * first NIC is eth0 whatever bus it sits on: hv_netvsc on Azure is eth0 anyway, PCI NICs (other NIC types,
 * a verification lab) would otherwise be enpXsY. No `rootdelay`: initramfs-tools turns it into a sleep on
 * every boot, and initramfs-tools (up to 30 s) and dracut (rd.retry, rd.timeout) wait for a late root
 * device by themselves.
 */
const KERNEL_ARGS = ['console=ttyS0,115200n8', 'earlyprintk=ttyS0', 'net.ifnames=0'];

/** More boot entries than this are not a real system; the rest are left alone with a warning. */
const MAX_BOOT_ENTRIES = 256;

function hasArg(args: string[], want: string): boolean {
  const key = want.split('=')[0];
  // Any console on the first serial port will do, whatever its speed.
  if (key === 'console' || key === 'earlyprintk')
    return args.some((a) => a === want.split(',')[0] || a.startsWith(`${want.split(',')[0]},`));
  return args.some((a) => a.split('=')[0] === key);
}

/** The guest's initramfs generator, which decides what a root-device wait on the kernel line does. */

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

export async function fixKernelCommandLine(plan: Plan, rootUuid: string): Promise<void> {
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
