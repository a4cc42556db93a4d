import type { HyperVGeneration } from './state';

export interface VmSizeInfo {
  name: string;
  vCPUs: number;
  memoryInMB: number;
  maxDataDiskCount: number;
  maxNics: number;
  resourceDiskSizeInMB: number;
  /** Quota family as the usages API names it. */
  family: string;
  familyDisplay: string;
  generations: HyperVGeneration[];
}

const s = (
  name: string,
  vCPUs: number,
  memoryInMB: number,
  maxDataDiskCount: number,
  maxNics: number,
  resourceDiskSizeInMB: number,
  family: string,
  familyDisplay: string,
  generations: HyperVGeneration[] = ['V1', 'V2'],
): VmSizeInfo => ({
  name,
  vCPUs,
  memoryInMB,
  maxDataDiskCount,
  maxNics,
  resourceDiskSizeInMB,
  family,
  familyDisplay,
  generations,
});

/** Sizes every simulated location offers; figures follow the published size tables. */
export const VM_SIZES: readonly VmSizeInfo[] = [
  s('Standard_B1s', 1, 1024, 2, 2, 4096, 'standardBSFamily', 'Standard BS Family vCPUs'),
  s('Standard_B1ms', 1, 2048, 2, 2, 4096, 'standardBSFamily', 'Standard BS Family vCPUs'),
  s('Standard_B2s', 2, 4096, 4, 3, 8192, 'standardBSFamily', 'Standard BS Family vCPUs'),
  s('Standard_B2ms', 2, 8192, 4, 3, 16384, 'standardBSFamily', 'Standard BS Family vCPUs'),
  s('Standard_B4ms', 4, 16384, 8, 4, 32768, 'standardBSFamily', 'Standard BS Family vCPUs'),
  s('Standard_DS1_v2', 1, 3584, 4, 2, 7168, 'standardDSv2Family', 'Standard DSv2 Family vCPUs'),
  s('Standard_DS2_v2', 2, 7168, 8, 2, 14336, 'standardDSv2Family', 'Standard DSv2 Family vCPUs'),
  s('Standard_D2s_v3', 2, 8192, 4, 2, 16384, 'standardDSv3Family', 'Standard DSv3 Family vCPUs'),
  s('Standard_D4s_v3', 4, 16384, 8, 2, 32768, 'standardDSv3Family', 'Standard DSv3 Family vCPUs'),
  s('Standard_D8s_v3', 8, 32768, 16, 4, 65536, 'standardDSv3Family', 'Standard DSv3 Family vCPUs'),
  s('Standard_D2s_v5', 2, 8192, 4, 2, 0, 'standardDSv5Family', 'Standard DSv5 Family vCPUs'),
  s('Standard_D4s_v5', 4, 16384, 8, 2, 0, 'standardDSv5Family', 'Standard DSv5 Family vCPUs'),
  s('Standard_E2s_v3', 2, 16384, 4, 2, 32768, 'standardESv3Family', 'Standard ESv3 Family vCPUs'),
  // Av2 sizes boot Generation 1 images only, which makes them the way to exercise the generation check.
  s('Standard_A1_v2', 1, 2048, 2, 2, 10240, 'standardAv2Family', 'Standard Av2 Family vCPUs', ['V1']),
  s('Standard_A2_v2', 2, 4096, 4, 2, 20480, 'standardAv2Family', 'Standard Av2 Family vCPUs', ['V1']),
];

export function findVmSize(name: string): VmSizeInfo | undefined {
  const n = name.toLowerCase();
  return VM_SIZES.find((z) => z.name.toLowerCase() === n);
}
