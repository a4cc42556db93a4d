import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { makeExt4FromTree } from '../../guest/linux/ext4';
import { writePartitionTable } from '../../guest/disk/partition';
import type { FirewallStyle, NetworkStyle } from '../../guest/linux/types';
import {
  digest,
  FIREWALLD_PUBLIC,
  type Flavor,
  iptablesRules,
  osRelease,
  seededMac,
  seededUuid,
  SSH_UNIT_DEBIAN,
  SSH_UNIT_RHEL,
  SSHD_CONFIG,
  ufwRules,
  WAAGENT_CONF,
  WAAGENT_SCRIPT,
  WAAGENT_UNIT,
} from './linux-files';
import { MiB } from '../../domain/units';
import { seededStream } from './seeded';
import { debianInterfaces, PERSISTENT_NET_RULES, persistentNetRules } from '../guests/recipes';

/**
 * Demo Linux disks with a real ext4 root filesystem that looks like a VMware guest of a common distro:
 * static IP, VMware-era udev net rules, a firewall without SSH, sshd and the Azure agent installed but
 * disabled, /dev/sdX names in fstab. Guest preparation has something real to fix on each of them.
 */

export type { FirewallStyle, NetworkStyle };

export interface LinuxImageOptions {
  /** Whole-disk size, a multiple of 1 MiB; the file is sparse. */
  sizeBytes: number;
  scheme: 'mbr' | 'gpt';
  hostname: string;
  networkStyle: NetworkStyle;
  firewall: FirewallStyle;
  /** Pseudo-random payload under /usr/share/demo and /var/lib/demo, in MiB (default 100). */
  usedMiB?: number;
  /** Seeds file contents and ids; defaults to the hostname, so equal options give equal contents. */
  seed?: string;
  /** Name of the VMware-era NIC in the network config (default ens192, eth0 for `interfaces`). */
  nicName?: string;
  /** Static address with prefix (default derived from the seed, in 192.168.x.0/24). */
  ipAddress?: string;
  /** Changes the generated root tree (a host directory) before it becomes the filesystem, e.g. to plant hostile files. */
  customize?: (root: string) => Promise<void>;
}

export interface LinuxImage {
  imagePath: string;
  rootPartitionOffset: number;
  rootPartitionIndex: number;
  rootFsUuid: string;
}

const ROOT_START = MiB;
/** Fixed file times keep the generated trees (and so the images) stable across runs. */
const FIXED_MTIME = new Date('2024-03-01T12:00:00Z');

function flavorOf(o: LinuxImageOptions): Flavor {
  // The distro follows the network style, which is what ties a guest to its family.
  return o.networkStyle === 'netplan' ? 'ubuntu' : o.networkStyle === 'ifcfg' ? 'rhel' : 'debian';
}

interface TreeFile {
  content: string | Buffer;
  mode?: number;
}
type Tree = Map<string, TreeFile | { symlink: string } | { dir: true }>;

function buildTree(o: LinuxImageOptions, flavor: Flavor, rootUuid: string): Tree {
  const seed = o.seed ?? o.hostname;
  const t: Tree = new Map();
  const file = (p: string, content: string | Buffer, mode?: number) => t.set(p, { content, mode });
  const link = (p: string, target: string) => t.set(p, { symlink: target });
  const d = digest(seed, 'net');
  const ip = o.ipAddress ?? `192.168.${10 + (d[0] % 200)}.${20 + (d[1] % 200)}/24`;
  const [addr, prefix] = ip.split('/');
  const gw = addr.split('.').slice(0, 3).concat('1').join('.');
  const nic = o.nicName ?? (o.networkStyle === 'interfaces' ? 'eth0' : 'ens192');
  const mac = seededMac(seed);
  const deb = flavor !== 'rhel';
  const unitDir = '/usr/lib/systemd/system';
  // Enablement symlinks use the path the distro's packaging uses, as systemctl would have written them.
  const unitLinkDir = deb ? '/lib/systemd/system' : '/usr/lib/systemd/system';
  const wants = '/etc/systemd/system/multi-user.target.wants';

  // Merged /usr, as on current Ubuntu, Debian and EL8.
  link('/bin', 'usr/bin');
  link('/sbin', 'usr/sbin');
  link('/lib', 'usr/lib');
  for (const dir of [
    '/usr/bin',
    '/usr/sbin',
    '/tmp',
    '/root',
    '/home',
    '/srv/data',
    '/srv/backup',
    '/proc',
    '/sys',
    '/dev',
    '/run',
    '/mnt',
  ]) {
    t.set(dir, { dir: true });
  }

  file('/etc/hostname', `${o.hostname}\n`);
  file('/etc/hosts', `127.0.0.1\tlocalhost\n127.0.1.1\t${o.hostname}\n\n::1\tlocalhost ip6-localhost ip6-loopback\n`);
  file('/usr/lib/os-release', osRelease(flavor));
  link('/etc/os-release', '../usr/lib/os-release');
  if (flavor === 'rhel') {
    file('/etc/redhat-release', 'Rocky Linux release 8.9 (Green Obsidian)\n');
    link('/etc/system-release', 'redhat-release');
  } else {
    file('/etc/debian_version', flavor === 'ubuntu' ? 'bookworm/sid\n' : '12.5\n');
  }
  if (flavor === 'ubuntu') {
    file(
      '/etc/lsb-release',
      'DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=22.04\nDISTRIB_CODENAME=jammy\nDISTRIB_DESCRIPTION="Ubuntu 22.04.4 LTS"\n',
    );
  }
  file(
    '/etc/passwd',
    'root:x:0:0:root:/root:/bin/bash\nsshd:x:74:74:Privilege-separated SSH:/run/sshd:/usr/sbin/nologin\nops:x:1000:1000:Operations:/home/ops:/bin/bash\n',
  );
  file('/etc/group', 'root:x:0:\nsshd:x:74:\nops:x:1000:\n');
  file('/etc/shadow', 'root:*:19700:0:99999:7:::\nsshd:!!:19700::::::\nops:!:19700:0:99999:7:::\n', 0o640);
  file('/etc/machine-id', digest(seed, 'machine-id').subarray(0, 16).toString('hex') + '\n', 0o444);

  const backupUuid = seededUuid(seed, 'backup-fs');
  file(
    '/etc/fstab',
    [
      '# /etc/fstab: static file system information.',
      '#',
      '# <file system> <mount point>   <type>  <options>       <dump>  <pass>',
      `/dev/sda1       /               ext4    ${deb ? 'errors=remount-ro' : 'defaults'} 0       1`,
      '/dev/sdb1       /srv/data       ext4    defaults        0       2',
      `UUID=${backupUuid} /srv/backup xfs defaults 0 2`,
      'tmpfs           /run/shm        tmpfs   defaults,size=256m 0   0',
      '',
    ].join('\n'),
  );

  file('/etc/ssh/sshd_config', SSHD_CONFIG, 0o644);
  file('/etc/ssh/sshd_config.d/50-site.conf', 'ClientAliveInterval 120\n');
  const sshUnit = deb ? 'ssh.service' : 'sshd.service';
  file(`${unitDir}/${sshUnit}`, deb ? SSH_UNIT_DEBIAN : SSH_UNIT_RHEL);
  file(
    `${unitDir}/cron.service`,
    '[Unit]\nDescription=Regular background program processing daemon\n\n[Service]\nExecStart=/usr/sbin/cron -f\n\n[Install]\nWantedBy=multi-user.target\n',
  );
  link(`${wants}/cron.service`, `${unitLinkDir}/cron.service`);

  // The Azure agent is installed (so a restore can turn it on) but disabled, as on a VMware guest.
  file('/usr/sbin/waagent', WAAGENT_SCRIPT, 0o755);
  file('/etc/waagent.conf', WAAGENT_CONF);
  file(`${unitDir}/${deb ? 'walinuxagent.service' : 'waagent.service'}`, WAAGENT_UNIT);

  if (deb) {
    file(
      '/etc/default/grub',
      [
        "# If you change this file, run 'update-grub' afterwards to update",
        '# /boot/grub/grub.cfg.',
        'GRUB_DEFAULT=0',
        'GRUB_TIMEOUT_STYLE=hidden',
        'GRUB_TIMEOUT=0',
        `GRUB_DISTRIBUTOR=\`lsb_release -i -s 2> /dev/null || echo Debian\``,
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet splash"',
        'GRUB_CMDLINE_LINUX=""',
        '',
      ].join('\n'),
    );
    const kver = flavor === 'ubuntu' ? '5.15.0-105-generic' : '6.1.0-18-amd64';
    file(
      '/boot/grub/grub.cfg',
      [
        '# DO NOT EDIT THIS FILE',
        '# It is automatically generated by grub-mkconfig',
        'set default="0"',
        'insmod ext2',
        `search --no-floppy --fs-uuid --set=root ${rootUuid}`,
        `menuentry '${flavor === 'ubuntu' ? 'Ubuntu' : 'Debian GNU/Linux'}' --class gnu-linux --class os {`,
        `\tlinux\t/boot/vmlinuz-${kver} root=UUID=${rootUuid} ro  quiet splash`,
        `\tinitrd\t/boot/initrd.img-${kver}`,
        '}',
        `menuentry 'Recovery mode' --class gnu-linux --class os {`,
        `\tlinux\t/boot/vmlinuz-${kver} root=UUID=${rootUuid} ro recovery nomodeset`,
        `\tinitrd\t/boot/initrd.img-${kver}`,
        '}',
        '',
      ].join('\n'),
    );
  } else {
    file(
      '/etc/default/grub',
      [
        'GRUB_TIMEOUT=5',
        'GRUB_DISTRIBUTOR="$(sed \'s, release .*$,,g\' /etc/system-release)"',
        'GRUB_DEFAULT=saved',
        'GRUB_DISABLE_SUBMENU=true',
        'GRUB_TERMINAL_OUTPUT="console"',
        'GRUB_CMDLINE_LINUX="rhgb quiet"',
        'GRUB_DISABLE_RECOVERY="true"',
        'GRUB_ENABLE_BLSCFG=true',
        '',
      ].join('\n'),
    );
    // EL8 keeps the kernel command line in grubenv (a fixed 1 KiB block) referenced by BLS entries.
    const env =
      '# GRUB Environment Block\nsaved_entry=4.18.0-513.5.1.el8_9.x86_64\nkernelopts=root=/dev/sda1 ro rhgb quiet \nboot_success=0\n';
    file('/boot/grub2/grubenv', env + '#'.repeat(1024 - Buffer.byteLength(env)));
    const machineId = digest(seed, 'machine-id').subarray(0, 16).toString('hex');
    file(
      `/boot/loader/entries/${machineId}-4.18.0-513.5.1.el8_9.x86_64.conf`,
      [
        'title Rocky Linux (4.18.0-513.5.1.el8_9.x86_64) 8.9 (Green Obsidian)',
        'version 4.18.0-513.5.1.el8_9.x86_64',
        'linux /boot/vmlinuz-4.18.0-513.5.1.el8_9.x86_64',
        'initrd /boot/initramfs-4.18.0-513.5.1.el8_9.x86_64.img $tuned_initrd',
        'options $kernelopts $tuned_params',
        'id rocky-20240301120000-4.18.0-513.5.1.el8_9.x86_64',
        'grub_users $grub_users',
        'grub_arg --unrestricted',
        'grub_class rocky',
        '',
      ].join('\n'),
    );
  }

  file(PERSISTENT_NET_RULES, persistentNetRules(mac, nic));

  switch (o.networkStyle) {
    case 'netplan':
      file(
        '/etc/netplan/00-installer-config.yaml',
        [
          "# This is the network config written by 'subiquity'",
          'network:',
          '  ethernets:',
          `    ${nic}:`,
          '      addresses:',
          `      - ${addr}/${prefix}`,
          '      nameservers:',
          '        addresses:',
          `        - ${gw}`,
          '        search:',
          '        - corp.example',
          '      routes:',
          '      - to: default',
          `        via: ${gw}`,
          '  version: 2',
          '',
        ].join('\n'),
        0o600,
      );
      break;
    case 'ifcfg':
      file(
        `/etc/sysconfig/network-scripts/ifcfg-${nic}`,
        [
          'TYPE=Ethernet',
          'PROXY_METHOD=none',
          'BROWSER_ONLY=no',
          'BOOTPROTO=none',
          'DEFROUTE=yes',
          'IPV4_FAILURE_FATAL=no',
          'IPV6INIT=no',
          `NAME=${nic}`,
          `UUID=${seededUuid(seed, 'nm-connection')}`,
          `DEVICE=${nic}`,
          'ONBOOT=yes',
          `IPADDR=${addr}`,
          `PREFIX=${prefix}`,
          `GATEWAY=${gw}`,
          `DNS1=${gw}`,
          'DOMAIN=corp.example',
          `HWADDR=${mac.toUpperCase()}`,
          '',
        ].join('\n'),
      );
      file('/etc/sysconfig/network', `# Created by anaconda\nNETWORKING=yes\nGATEWAY=${gw}\n`);
      break;
    case 'interfaces':
      file(
        '/etc/network/interfaces',
        debianInterfaces({ nic, address: `${addr}/${prefix}`, gateway: gw, dns: { nameserver: gw, search: 'corp.example' } }),
      );
      t.set('/etc/network/interfaces.d', { dir: true });
      break;
  }

  switch (o.firewall) {
    case 'ufw':
      file('/etc/ufw/ufw.conf', '# /etc/ufw/ufw.conf\n#\n\n# Set to yes to start on boot.\nENABLED=yes\n\nLOGLEVEL=low\n');
      file('/etc/ufw/user.rules', ufwRules(false), 0o640);
      file('/etc/ufw/user6.rules', ufwRules(true), 0o640);
      file(
        '/etc/default/ufw',
        'IPV6=yes\nDEFAULT_INPUT_POLICY="DROP"\nDEFAULT_OUTPUT_POLICY="ACCEPT"\nDEFAULT_FORWARD_POLICY="DROP"\nDEFAULT_APPLICATION_POLICY="SKIP"\nMANAGE_BUILTINS=no\nIPT_SYSCTL=/etc/ufw/sysctl.conf\n',
      );
      file(
        `${unitDir}/ufw.service`,
        '[Unit]\nDescription=Uncomplicated firewall\nBefore=network.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/lib/ufw/ufw-init start quiet\nExecStop=/lib/ufw/ufw-init stop\n\n[Install]\nWantedBy=multi-user.target\n',
      );
      link(`${wants}/ufw.service`, `${unitLinkDir}/ufw.service`);
      break;
    case 'firewalld':
      file(
        '/etc/firewalld/firewalld.conf',
        '# firewalld config file\nDefaultZone=public\nCleanupOnExit=yes\nLockdown=no\nIPv6_rpfilter=yes\nFirewallBackend=nftables\n',
      );
      file('/etc/firewalld/zones/public.xml', FIREWALLD_PUBLIC);
      file(
        `${unitDir}/firewalld.service`,
        '[Unit]\nDescription=firewalld - dynamic firewall daemon\nBefore=network-pre.target\n\n[Service]\nExecStart=/usr/sbin/firewalld --nofork --nopid\n\n[Install]\nWantedBy=multi-user.target\nAlias=dbus-org.fedoraproject.FirewallD1.service\n',
      );
      link(`${wants}/firewalld.service`, `${unitLinkDir}/firewalld.service`);
      link('/etc/systemd/system/dbus-org.fedoraproject.FirewallD1.service', `${unitLinkDir}/firewalld.service`);
      break;
    case 'iptables':
      file('/etc/iptables/rules.v4', iptablesRules(false), 0o640);
      file('/etc/iptables/rules.v6', iptablesRules(true), 0o640);
      file(
        `${unitDir}/netfilter-persistent.service`,
        '[Unit]\nDescription=netfilter persistent configuration\nBefore=network-pre.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/sbin/netfilter-persistent start\n\n[Install]\nWantedBy=multi-user.target\n',
      );
      link(`${wants}/netfilter-persistent.service`, `${unitLinkDir}/netfilter-persistent.service`);
      break;
  }
  return t;
}

async function writePayload(root: string, seed: string, usedMiB: number): Promise<void> {
  const total = Math.round(usedMiB * MiB);
  const sizes = seededStream(seed, 'sizes');
  let written = 0;
  for (let i = 0; written < total; i++) {
    // 64 KiB .. 8 MiB files: a spread of small and large extents like a real /usr.
    const r = sizes(4).readUInt32LE(0);
    const size = Math.min(total - written, 64 * 1024 * (1 + (r % 128)));
    const dir = i % 5 < 3 ? 'usr/share/demo' : 'var/lib/demo';
    const sub = path.join(root, dir, `pkg${String(i % 16).padStart(2, '0')}`);
    await fsp.mkdir(sub, { recursive: true });
    await fsp.writeFile(path.join(sub, `blob-${String(i).padStart(5, '0')}.bin`), seededStream(seed, `file${i}`)(size));
    written += size;
  }
}

async function materialize(root: string, tree: Tree): Promise<void> {
  for (const [p, entry] of tree) {
    const full = path.join(root, p);
    await fsp.mkdir(path.dirname(full), { recursive: true });
    if ('symlink' in entry) await fsp.symlink(entry.symlink, full);
    else if ('dir' in entry) await fsp.mkdir(full, { recursive: true });
    else {
      await fsp.writeFile(full, entry.content);
      await fsp.chmod(full, entry.mode ?? 0o644);
    }
  }
}

async function fixTimes(dir: string): Promise<void> {
  for (const e of await fsp.readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) await fixTimes(full);
    await fsp.lutimes(full, FIXED_MTIME, FIXED_MTIME);
  }
  await fsp.utimes(dir, FIXED_MTIME, FIXED_MTIME);
}

/**
 * Builds a sparse whole-disk image: partition table, then one ext4 root partition at 1 MiB that
 * fills the disk (less 1 MiB at the end, where GPT keeps its backup).
 *
 * mke2fs writes the filesystem straight into the disk image with `-E offset=`, instead of building a
 * partition image and copying it in: same result, but no second multi-GiB file to scan for zeros.
 */
export async function buildLinuxDiskImage(imagePath: string, opts: LinuxImageOptions): Promise<LinuxImage> {
  if (opts.sizeBytes % MiB !== 0 || opts.sizeBytes < 64 * MiB) {
    throw new RestoreError(FailureType.InvalidRequest, 'sizeBytes must be a multiple of 1 MiB and at least 64 MiB');
  }
  const usedMiB = opts.usedMiB ?? 100;
  const rootSize = opts.sizeBytes - ROOT_START - MiB;
  if (usedMiB * MiB > rootSize * 0.8) {
    throw new RestoreError(FailureType.InvalidRequest, `usedMiB ${usedMiB} does not fit a ${opts.sizeBytes}-byte disk`);
  }
  const seed = opts.seed ?? opts.hostname;
  const flavor = flavorOf(opts);
  const rootFsUuid = seededUuid(seed, 'root-fs');
  const tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'vmrestore-linux-tree-'));
  try {
    const root = path.join(tmp, 'root');
    await fsp.mkdir(root);
    await materialize(root, buildTree(opts, flavor, rootFsUuid));
    await writePayload(root, seed, usedMiB);
    if (opts.customize) await opts.customize(root);
    await fixTimes(root);

    await fsp.mkdir(path.dirname(path.resolve(imagePath)), { recursive: true });
    const fh = await fsp.open(imagePath, 'w');
    try {
      await fh.truncate(opts.sizeBytes);
    } finally {
      await fh.close();
    }
    const diskDigest = digest(seed, 'disk-id');
    await writePartitionTable(imagePath, {
      scheme: opts.scheme,
      diskId: opts.scheme === 'mbr' ? `0x${diskDigest.subarray(0, 4).toString('hex')}` : seededUuid(seed, 'gpt-disk'),
      partitions: [
        {
          startBytes: ROOT_START,
          sizeBytes: rootSize,
          type: 'linux',
          bootable: opts.scheme === 'mbr',
          uuid: opts.scheme === 'gpt' ? seededUuid(seed, 'gpt-root') : undefined,
          name: opts.scheme === 'gpt' ? 'root' : undefined,
        },
      ],
    });
    await makeExt4FromTree(imagePath, {
      offsetBytes: ROOT_START,
      sizeBytes: rootSize,
      tree: root,
      uuid: rootFsUuid,
      label: 'root',
      hashSeed: seededUuid(seed, 'hash-seed'),
      timeoutMs: 300_000,
    });
  } finally {
    await fsp.rm(tmp, { recursive: true, force: true });
  }
  return { imagePath, rootPartitionOffset: ROOT_START, rootPartitionIndex: 1, rootFsUuid };
}
