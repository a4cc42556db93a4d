import type { FilesystemInfo, PartitionTable } from '../disk/partition';
import type { GuestChange } from '../types';

/** How the guest configures its network and firewall, as preparation detects them. */
export type NetworkStyle = 'netplan' | 'ifcfg' | 'interfaces';
export type FirewallStyle = 'ufw' | 'firewalld' | 'iptables';

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

/** The guest's initramfs generator, which decides what a root-device wait on the kernel line does. */
export type InitramfsTool = 'initramfs-tools' | 'dracut' | 'unknown';
