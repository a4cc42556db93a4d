/**
 * ARM simulator for the lab: an HTTPS (or http) server speaking the Azure Resource Manager REST surface
 * that @azure/arm-compute 25.x and @azure/arm-network 39.x use for a restore (resource groups, VNets,
 * storage accounts, managed disks incl. VHD import from Azurite, VMs, NICs, run command), with the
 * long-running-operation protocol core-lro follows, run-time fault injection and persisted state.
 */
export { startArmSimulator, type ArmSimulator, type ArmSimulatorOptions, type RequestLogEntry } from './server';
export { createArmClients, stubCredential, type ArmClients, type ArmClientsOptions, type ArmCredential } from '../../azure/arm-clients';
export type { FaultRule, FaultKind, ActiveFault } from './faults';
export type { SeedOptions, SeedVm, BlobBackend } from './seed';
export type { QuotaLimits, RunCommandHandler, RunCommandOutput, RunCommandRequest, RunCommandResponseRule } from './context';
export type { SimState } from './state';
export { VM_SIZES, findVmSize, type VmSizeInfo } from './sizes';
