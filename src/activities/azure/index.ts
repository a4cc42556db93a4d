/**
 * The Azure activities, one file per seed step; each step's activities are built on one shared context
 * (configuration, Temporal client, lazily built ARM and Blob clients). The registered activity names are
 * the keys of the object below and never change.
 */
import { withFailureMapping } from '../failures';
import { cleanupActivities } from './cleanup';
import { createAzureContext, type AzureDeps } from './context';
import { guestActivities } from './guest';
import { helperActivities } from './helper';
import { initializeActivities } from './initialize';
import { leaseActivities } from './leases';
import { proxyActivities } from './proxy';
import { uploadActivities } from './upload';
import { vmActivities } from './vm';

export type { AzureDeps } from './context';
export { parseSubnetId } from './initialize';
export { azureProxyQueues } from './proxy';

export function createAzureActivities(deps: AzureDeps) {
  const c = createAzureContext(deps);
  return {
    ...initializeActivities(c),
    ...leaseActivities(c),
    ...proxyActivities(c),
    ...uploadActivities(c),
    ...guestActivities(c),
    ...helperActivities(c),
    ...vmActivities(c),
    ...cleanupActivities(c),
  };
}

export type AzureActivities = ReturnType<typeof createAzureActivities>;

export function createMappedAzureActivities(deps: AzureDeps): AzureActivities {
  return withFailureMapping(createAzureActivities(deps));
}
