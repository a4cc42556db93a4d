import { withFailureMapping } from '../failures';
import { createVSphereContext, type VSphereDeps } from './context';
import { createInitializeActivities } from './initialize';
import { createProxyActivities } from './proxy';
import { createSnapshotActivities } from './snapshot';
import { createVmActivities } from './vm';
import { createWriteDiskActivities } from './write-disk';

export { RESTORE_ID_KEY, type VSphereDeps } from './context';

/** The vSphere activities, one file per seed step; their names are the registered activity types. */
export function createVSphereActivities(deps: VSphereDeps) {
  const ctx = createVSphereContext(deps);
  return {
    ...createInitializeActivities(ctx),
    ...createVmActivities(ctx),
    ...createSnapshotActivities(ctx),
    ...createProxyActivities(ctx),
    ...createWriteDiskActivities(ctx),
  };
}

export type VSphereActivities = ReturnType<typeof createVSphereActivities>;

export function createMappedVSphereActivities(deps: VSphereDeps): VSphereActivities {
  return withFailureMapping(createVSphereActivities(deps));
}
