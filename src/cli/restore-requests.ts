import type { AzureRestoreRequest } from '../domain/azure';
import type { VSphereRestoreRequest } from '../domain/vsphere';

/**
 * Restore requests as the `restore` commands and plan files build them: the fields given, with the
 * defaults a command line leaves implicit made explicit (so a request reads the same in history whichever
 * way it was made).
 */

function defined<T extends object>(fields: T): T {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as T;
}

/** The fields a vSphere restore request may carry from a command line or a plan file. */
export const VSPHERE_REQUEST_FIELDS = [
  'restorePointId',
  'vmName',
  'profile',
  'datacenter',
  'datastore',
  'folder',
  'resourcePool',
  'diskFormat',
  'networkMap',
  'transport',
  'proxy',
  'powerOn',
  'keepOnFailure',
  'throttleMBps',
  'diskConcurrency',
  'proxyWaitSeconds',
  'verify',
  'verifyNetwork',
  'verifyTimeoutSeconds',
  'keepOnVerifyFailure',
] as const;

/** The fields an Azure restore request may carry from a command line or a plan file. */
export const AZURE_REQUEST_FIELDS = [
  'restorePointId',
  'vmName',
  'resourceGroup',
  'location',
  'vmSize',
  'subnetId',
  'generation',
  'proxy',
  'keepOnFailure',
  'skipGuestPreparation',
  'verify',
  'verifyTimeoutSeconds',
  'keepOnVerifyFailure',
] as const;

export function vsphereRestoreRequest(fields: VSphereRestoreRequest): VSphereRestoreRequest {
  const request: VSphereRestoreRequest = {
    transport: 'auto',
    diskFormat: 'same',
    powerOn: false,
    keepOnFailure: false,
    ...defined(fields),
  };
  if (request.verify) request.keepOnVerifyFailure ??= false;
  return request;
}

export function azureRestoreRequest(fields: AzureRestoreRequest): AzureRestoreRequest {
  const request: AzureRestoreRequest = { keepOnFailure: false, ...defined(fields) };
  if (request.verify) request.keepOnVerifyFailure ??= false;
  return request;
}
