import { FailureType, RestoreError } from '../../domain/errors';
import type { BootConversionResult } from './boot-change';
import { convertLinuxUefiToBios } from './linux-uefi-to-bios';
import { convertWindowsUefiToBios } from '../windows/bios-boot';

export type { BootChange, BootConversionResult } from './boot-change';

export interface UefiToBiosOptions {
  osType: 'linux' | 'windows';
  /** Scratch space: small for Linux; for Windows a sparse copy of the Windows volume. */
  workDir: string;
}

/**
 * Makes a UEFI (GPT) OS disk image boot with BIOS firmware, for an Azure Generation 1 VM: GPT → MBR
 * and the OS's BIOS boot loader. The image is edited in place; refusals (beyond 2 TiB, more than four
 * partitions that must stay, no room for the boot loader) are thrown before anything is written.
 * A disk this function already converted is left alone (no changes, one warning).
 */
export async function convertUefiToBios(imagePath: string, opts: UefiToBiosOptions): Promise<BootConversionResult> {
  switch (opts.osType) {
    case 'linux':
      return convertLinuxUefiToBios(imagePath, { workDir: opts.workDir });
    case 'windows':
      return convertWindowsUefiToBios(imagePath, { workDir: opts.workDir });
    default:
      throw new RestoreError(FailureType.InvalidRequest, `UEFI to BIOS conversion: unknown osType '${String(opts.osType)}'`);
  }
}
