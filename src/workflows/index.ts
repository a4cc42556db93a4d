export { restoreToVSphere, progressQuery } from './restore-vsphere';
export { restorePlan } from './restore-plan';
export { restoreToAzure, azureProgressQuery } from './restore-azure';
export { resourceLease, acquireLease, releaseLease, leaseStateQuery, leaseWorkflowId } from './lease';
export { sweepRestores } from './sweep';
export { importFromVSphere, importProgressQuery } from './import-vsphere';
export { runRestorePlan, planProgressQuery, approvePlan } from './plan';
