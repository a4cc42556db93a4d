/** Hypervisor-neutral description of a backed-up VM, as stored in a restore point. */
export type GuestOsFamily = 'linux' | 'windows';
export type Firmware = 'bios' | 'efi';
/** How a disk was provisioned on the source. */
export type DiskProvisioning = 'thin' | 'thick';

export interface VmNic {
  /** Source network name; a restore maps it to a target network. */
  network: string;
  macAddress?: string;
}

export interface VmDisk {
  /** Stable index of the disk in the VM (0 = boot disk). */
  index: number;
  label: string;
  capacityBytes: number;
  provisioning: DiskProvisioning;
}

export interface VmConfig {
  name: string;
  guestOs: GuestOsFamily;
  firmware: Firmware;
  cpus: number;
  memoryMiB: number;
  nics: VmNic[];
  disks: VmDisk[];
}
