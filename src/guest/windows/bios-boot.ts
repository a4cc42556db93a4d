import type { BootConversionResult } from '../disk/boot-change';

export async function convertWindowsUefiToBios(imagePath: string, opts: { workDir: string }): Promise<BootConversionResult> {
  throw new Error(`not yet ${imagePath} ${opts.workDir}`);
}
