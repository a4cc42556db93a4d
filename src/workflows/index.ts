export { restoreToVSphere } from './restore-vsphere';
export { progressQuery } from '../domain/progress';
export { restorePlan } from './restore-plan';
export { restoreToAzure } from './restore-azure';
export { resourceLease } from './lease';
export { acquireLease, releaseLease, leaseStateQuery, leaseWorkflowId } from '../domain/lease';
export { sweepRestores } from './sweep';
export { importFromVSphere, importProgressQuery } from './import-vsphere';
export { runRestorePlan, planProgressQuery, approvePlan } from './plan';
