import type { GuestImage } from './build';

/**
 * The vm.json (`vmrestore repo import`) of a built guest: the VM as it was on VMware, with the MAC its
 * persistent-net rule names and its disks in order (OS, then data), read from the guest cache.
 */
export function guestVmJson(image: GuestImage, name: string): Record<string, unknown> {
  return {
    name,
    guestOs: 'linux',
    // vm.json names UEFI firmware 'efi'.
    firmware: image.firmware === 'uefi' ? 'efi' : 'bios',
    cpus: 2,
    memoryMiB: 2048,
    nics: [{ network: 'VM Network', macAddress: image.network.mac }],
    disks: [
      { path: image.osDisk, provisioning: 'thin', label: 'root' },
      { path: image.dataDisk, provisioning: 'thin', label: 'data' },
    ],
  };
}
