/** Binary size units (disk capacities, block sizes); link speeds and throttles are decimal MB/s. */
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;
