import type { Firmware } from '../../domain/vm';

/**
 * Recipes of the bootable Debian 12 test guests. Each looks like a guest that lived on VMware: a static
 * address on the VMware NIC name, a persistent-net rule pinned to its VMware MAC, a data disk in fstab
 * without nofail (by /dev/sdX on the BIOS guest, an older install; by UUID on the UEFI one, as Debian's
 * installer writes it), no serial console. Those are exactly the things a platform change breaks, and that
 * a boot shows. Everything here is part of the recipe hash: editing this file rebuilds the images.
 */

export type GuestName = 'debian12-bios' | 'debian12-uefi';
/** As the repository's VM config names it (`Firmware`). */
export type GuestFirmware = Firmware;
export type GuestNetworkStyle = 'ifupdown' | 'networkd';
/**
 * How fstab names filesystems: `kernel` (/dev/sdX, as an older or hand-edited install has it) or `uuid`
 * (UUID=, as Debian's installer writes it). Only `uuid` boots whichever order the kernel probes the disks
 * in; `kernel` is the hazard preparation fixes.
 */
export type GuestFstabNames = 'kernel' | 'uuid';

export interface GuestRecipe {
  name: GuestName;
  firmware: GuestFirmware;
  hostname: string;
  networkStyle: GuestNetworkStyle;
  fstabNames: GuestFstabNames;
  /** The name VMware's vmxnet3 slot gave the NIC, pinned by the persistent-net rule. */
  nicName: string;
  /** The VMware MAC (OUI 00:50:56) the persistent-net rule matches. */
  mac: string;
  /** Static IPv4 address with prefix length, and its gateway. */
  address: string;
  gateway: string;
  osDiskMiB: number;
  dataDiskMiB: number;
}

export const DEBIAN_SUITE = 'bookworm';

/** What debootstrap installs (minbase plus these), shared by every variant. */
export const BASE_PACKAGES = [
  'systemd-sysv',
  'udev',
  'dbus',
  'kmod',
  'linux-image-amd64',
  'initramfs-tools',
  'e2fsprogs',
  'openssh-server',
  'iproute2',
  'ifupdown',
  'isc-dhcp-client',
];

/** Installed in the base but removed where the variant's network stack replaces them. */
export const NETWORKD_REMOVES = ['ifupdown', 'isc-dhcp-client', 'isc-dhcp-common'];

export const GUEST_RECIPES: Record<GuestName, GuestRecipe> = {
  'debian12-bios': {
    name: 'debian12-bios',
    firmware: 'bios',
    hostname: 'deb12-bios',
    networkStyle: 'ifupdown',
    fstabNames: 'kernel',
    nicName: 'ens192',
    mac: '00:50:56:a1:5e:01',
    address: '192.168.50.20/24',
    gateway: '192.168.50.1',
    osDiskMiB: 2048,
    dataDiskMiB: 128,
  },
  'debian12-uefi': {
    name: 'debian12-uefi',
    firmware: 'efi',
    hostname: 'deb12-uefi',
    networkStyle: 'networkd',
    fstabNames: 'uuid',
    nicName: 'ens160',
    mac: '00:50:56:a1:5e:02',
    address: '192.168.60.20/24',
    gateway: '192.168.60.1',
    osDiskMiB: 2048,
    dataDiskMiB: 128,
  },
};

/** The test login: key-only, with sudo-free access enough to read the guest's state. */
export const GUEST_USER = 'ops';

/** UEFI: the EFI system partition's size; the root partition follows it. */
export const ESP_MIB = 64;

/** The data disk's mount point and a marker file on it, so a test can tell the right disk was mounted. */
export const DATA_MOUNT = '/srv/data';
export const DATA_MARKER = 'DISK-IDENTITY';

/**
 * initramfs-tools: only the storage drivers of the platforms these guests meet (VMware pvscsi and LSI,
 * Hyper-V storvsc, qemu virtio-scsi and LSI, SATA/IDE, NVMe), gzip-compressed. The default (`most`, zstd)
 * gives a 36 MB initrd that GRUB reads through BIOS calls for many seconds under emulation; this one is 7 MB.
 */
export const INITRAMFS_MODULES = [
  'ext4',
  'crc32c_generic',
  'sd_mod',
  'scsi_mod',
  'vmw_pvscsi',
  'mptspi',
  'mptsas',
  'sym53c8xx',
  'virtio_pci',
  'virtio_scsi',
  'virtio_blk',
  'hv_vmbus',
  'hv_storvsc',
  'ahci',
  'ata_piix',
  'ata_generic',
  'nvme',
];

export interface GuestFileContext {
  recipe: GuestRecipe;
  kernelVersion: string;
  rootFsUuid: string;
  /** The filesystems as the VMware guest's fstab names them (device path or `UUID=`). */
  rootDevice: string;
  espDevice?: string;
  dataDevice: string;
}

export interface GuestFile {
  content: string;
  mode?: number;
}

function prefixOf(address: string): { ip: string; prefix: number } {
  const [ip, prefix] = address.split('/');
  return { ip, prefix: Number(prefix) };
}

/**
 * Debian's /etc/network/interfaces as the installer writes it for a static address on one NIC (ifupdown),
 * optionally with resolver lines.
 */
export function debianInterfaces(o: {
  nic: string;
  address: string;
  gateway: string;
  dns?: { nameserver: string; search: string };
}): string {
  return [
    '# This file describes the network interfaces available on your system',
    '# and how to activate them. For more information, see interfaces(5).',
    '',
    'source /etc/network/interfaces.d/*',
    '',
    '# The loopback network interface',
    'auto lo',
    'iface lo inet loopback',
    '',
    '# The primary network interface',
    `allow-hotplug ${o.nic}`,
    `iface ${o.nic} inet static`,
    `\taddress ${o.address}`,
    `\tgateway ${o.gateway}`,
    ...(o.dns ? [`\tdns-nameservers ${o.dns.nameserver}`, `\tdns-search ${o.dns.search}`] : []),
    '',
  ].join('\n');
}

/** Files written over the bootstrapped tree (paths are absolute inside the guest). */
export function guestFiles(ctx: GuestFileContext): Map<string, GuestFile> {
  const { recipe: r } = ctx;
  const files = new Map<string, GuestFile>();
  const file = (p: string, content: string, mode?: number) => files.set(p, { content, mode });
  const { ip, prefix } = prefixOf(r.address);

  file('/etc/hostname', `${r.hostname}\n`);
  file('/etc/hosts', `127.0.0.1\tlocalhost\n127.0.1.1\t${r.hostname}\n\n::1\tlocalhost ip6-localhost ip6-loopback\n`);

  const fstab = [
    '# /etc/fstab: static file system information.',
    '# <file system> <mount point>   <type>  <options>       <dump>  <pass>',
    `${ctx.rootDevice}\t/\text4\terrors=remount-ro\t0\t1`,
  ];
  if (ctx.espDevice) fstab.push(`${ctx.espDevice}\t/boot/efi\tvfat\tumask=0077\t0\t1`);
  // The data disk, second on VMware's SCSI bus; no nofail, as the installer writes it.
  fstab.push(`${ctx.dataDevice}\t${DATA_MOUNT}\text4\tdefaults\t0\t2`, '');
  file('/etc/fstab', fstab.join('\n'));

  file(
    '/etc/udev/rules.d/70-persistent-net.rules',
    [
      '# This file was automatically generated by the /lib/udev/write_net_rules',
      '# program, run by the persistent-net-generator.rules rules file.',
      '',
      '# PCI device 0x15ad:0x07b0 (vmxnet3)',
      `SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="${r.mac}", ATTR{dev_id}=="0x0", ATTR{type}=="1", KERNEL=="eth*", NAME="${r.nicName}"`,
      '',
    ].join('\n'),
  );

  if (r.networkStyle === 'ifupdown') {
    file('/etc/network/interfaces', debianInterfaces({ nic: r.nicName, address: `${ip}/${prefix}`, gateway: r.gateway }));
  } else {
    file(
      `/etc/systemd/network/10-${r.nicName}.network`,
      [
        '[Match]',
        `Name=${r.nicName}`,
        '',
        '[Network]',
        `Address=${ip}/${prefix}`,
        `Gateway=${r.gateway}`,
        'LinkLocalAddressing=no',
        '',
      ].join('\n'),
    );
  }

  file('/etc/initramfs-tools/conf.d/vmrestore-guest.conf', 'MODULES=list\nCOMPRESS=gzip\n');
  file('/etc/initramfs-tools/modules', `${INITRAMFS_MODULES.join('\n')}\n`);

  // As Debian's grub packages leave it; update-grub would read this.
  file(
    '/etc/default/grub',
    [
      'GRUB_DEFAULT=0',
      'GRUB_TIMEOUT=1',
      'GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`',
      'GRUB_CMDLINE_LINUX_DEFAULT="quiet"',
      'GRUB_CMDLINE_LINUX=""',
      '',
    ].join('\n'),
  );
  file('/boot/grub/grub.cfg', grubConfig(ctx), 0o444);
  return files;
}

/** grub.cfg in the shape update-grub writes, so tools that parse one find what they expect. */
export function grubConfig(ctx: GuestFileContext): string {
  const k = ctx.kernelVersion;
  const partModule = ctx.recipe.firmware === 'efi' ? 'part_gpt' : 'part_msdos';
  const entry = [
    `menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-${ctx.rootFsUuid}' {`,
    '\tload_video',
    '\tinsmod gzio',
    `\tinsmod ${partModule}`,
    '\tinsmod ext2',
    `\tsearch --no-floppy --fs-uuid --set=root ${ctx.rootFsUuid}`,
    `\techo\t'Loading Linux ${k} ...'`,
    `\tlinux\t/boot/vmlinuz-${k} root=UUID=${ctx.rootFsUuid} ro  quiet`,
    "\techo\t'Loading initial ramdisk ...'",
    `\tinitrd\t/boot/initrd.img-${k}`,
    '}',
  ];
  return [
    '#',
    '# DO NOT EDIT THIS FILE',
    '#',
    '# It is automatically generated by grub-mkconfig using templates',
    '# from /etc/grub.d and settings from /etc/default/grub',
    '#',
    '',
    '### BEGIN /etc/grub.d/00_header ###',
    'set default="0"',
    'if [ x$feature_default_font_path = xy ] ; then',
    '   font=unicode',
    'else',
    '   font=$prefix/unicode.pf2',
    'fi',
    'function load_video {',
    '  if [ x$feature_all_video_module = xy ]; then',
    '    insmod all_video',
    '  fi',
    '}',
    'terminal_output console',
    'set timeout=1',
    '### END /etc/grub.d/00_header ###',
    '',
    '### BEGIN /etc/grub.d/10_linux ###',
    ...entry,
    '### END /etc/grub.d/10_linux ###',
    '',
  ].join('\n');
}

/** The early config embedded in the GRUB core: find the root filesystem by UUID and read its grub.cfg. */
export function grubEarlyConfig(rootFsUuid: string): string {
  return `search.fs_uuid ${rootFsUuid} root\nset prefix=($root)/boot/grub\n`;
}

/** Modules built into the GRUB core image, per platform. */
export const GRUB_CORE_MODULES: Record<GuestFirmware, string[]> = {
  bios: ['biosdisk', 'part_msdos', 'ext2', 'search_fs_uuid', 'normal'],
  efi: ['part_gpt', 'part_msdos', 'fat', 'ext2', 'search_fs_uuid', 'normal', 'efi_gop', 'efi_uga'],
};
