import { startArmSim } from './azure';
import { writeLabConfig } from './config';
import { ensureProxyVm } from './inventory';
import { startLab, type LabHook, type LabState } from './lab';

export * from './lab';
export { labConfig, labConfigFile, labProxy, writeLabConfig } from './config';

/** What `lab up` starts after Temporal, vcsim and Azurite, in this order; the config file comes last. */
export const LAB_COMPONENTS: readonly LabHook[] = [
  ensureProxyVm,
  startArmSim,
  async (state) => {
    writeLabConfig(state);
    return state;
  },
];

/** Starts what is not running yet, reusing what is; safe to call repeatedly. */
export function labUp(log: (s: string) => void = () => {}): Promise<LabState> {
  return startLab(LAB_COMPONENTS, log);
}
