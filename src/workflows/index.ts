export { restoreToVSphere, progressQuery } from './restore-vsphere';
export { restorePlan } from './restore-plan';
