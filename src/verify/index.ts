export * from './boot';
export { findOvmf, type BootFirmware, type NicModel, type ScsiController } from './qemu';
export { readGuestTraffic, type DhcpMessage, type GuestTraffic } from './pcap';
