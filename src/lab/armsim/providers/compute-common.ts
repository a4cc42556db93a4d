/** Microsoft.Compute values and checks the disk and VM providers share. */

import { normLocation } from '../common';
import { ArmError, invalidParameter } from '../errors';
import { enumValue } from '../util';
import { GiB } from '../../../domain/units';
export { GiB };

export const COMPUTE = 'Microsoft.Compute';

export const OS_TYPES = ['Windows', 'Linux'] as const;

export const GENERATIONS = ['V1', 'V2'] as const;

export const CACHING = ['None', 'ReadOnly', 'ReadWrite'] as const;

export const DELETE_OPTIONS = ['Detach', 'Delete'] as const;

const DISK_SKUS = [
  'Standard_LRS',
  'Premium_LRS',
  'StandardSSD_LRS',
  'UltraSSD_LRS',
  'Premium_ZRS',
  'StandardSSD_ZRS',
  'PremiumV2_LRS',
] as const;

export function diskSku(name: string | undefined): string | undefined {
  if (name === undefined) return undefined;
  const sku = enumValue(name, DISK_SKUS);
  if (!sku) throw invalidParameter(`The value '${name}' is not a valid disk SKU. Valid values are ${DISK_SKUS.join(', ')}.`, 'sku.name');
  return sku;
}

export function invalidLocation(name: string, existing: string, requested: string, rg: string): ArmError {
  return new ArmError(
    409,
    'InvalidResourceLocation',
    `The resource '${name}' already exists in location '${existing}' in resource group '${rg}'. A resource with the same name cannot be created in location '${normLocation(requested)}'. Please select a new resource name.`,
  );
}

export function enumOrThrow<T extends string>(v: string | undefined, allowed: readonly T[], where: string): T | undefined {
  if (v === undefined) return undefined;
  const e = enumValue(v, allowed);
  if (!e)
    throw invalidParameter(
      `The value '${v}' of parameter '${where}' is not allowed. Allowed values are ${allowed.map((a) => `'${a}'`).join(', ')}.`,
      where,
    );
  return e;
}
