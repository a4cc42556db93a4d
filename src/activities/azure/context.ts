import { hostname } from 'node:os';
import type { Client } from '@temporalio/client';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import type { AppConfig, AzureConfig } from '../../config';
import { FailureType, RestoreError } from '../../domain/errors';
import type { ArmClients } from '../../azure/arm-clients';
import { armClientsFor } from '../../azure/credential';

/** The identity a worker of this process reports when none is set: the SDK's default. */
export const defaultWorkerIdentity = (): string => `${process.pid}@${hostname()}`;

export interface AzureDeps {
  config: AppConfig;
  client: Client;
  /** The identity of the worker these activities run in, recorded with each upload (default: the SDK's). */
  workerIdentity?: string;
}

/** What every Azure activity works with: the configuration, the Temporal client, and lazily built Azure clients. */
export interface AzureContext {
  config: AppConfig;
  client: Client;
  workerIdentity: string;
  /** The configured Azure target; a Configuration failure when there is none. */
  azure(): AzureConfig;
  /** ARM management clients, built once per worker. */
  clients(): ArmClients;
  /** The container the VHD page blobs go to. */
  blobs(): ContainerClient;
  /** A VM's power state as the instance view reports it (`running`, `deallocated`, …). */
  powerState(resourceGroup: string, vmName: string): Promise<string>;
}

export function createAzureContext(deps: AzureDeps): AzureContext {
  const { config } = deps;
  const azure = (): AzureConfig => {
    if (!config.azure)
      throw new RestoreError(FailureType.Configuration, 'no Azure target is configured (config key "azure", or start the lab)');
    return config.azure;
  };
  let arm: ArmClients | undefined;
  const clients = (): ArmClients => {
    if (!arm) {
      arm = armClientsFor(azure(), { maxRetries: 6, retryDelayInMs: 200, maxRetryDelayInMs: 5000 });
    }
    return arm;
  };
  let container: ContainerClient | undefined;
  const blobs = (): ContainerClient => {
    if (!container) {
      const a = azure();
      const cs = a.blobConnectionString ?? (a.blobConnectionStringEnv ? process.env[a.blobConnectionStringEnv] : undefined);
      if (!cs) throw new RestoreError(FailureType.Configuration, 'azure.blobConnectionStringEnv is not set or names an empty variable');
      container = BlobServiceClient.fromConnectionString(cs).getContainerClient(a.container);
    }
    return container;
  };
  const powerState = async (resourceGroup: string, vmName: string): Promise<string> => {
    const view = await clients().compute.virtualMachines.instanceView(resourceGroup, vmName);
    const s = view.statuses?.find((x) => x.code?.startsWith('PowerState/'));
    return s?.code?.slice('PowerState/'.length) ?? 'unknown';
  };
  return { config, client: deps.client, workerIdentity: deps.workerIdentity ?? defaultWorkerIdentity(), azure, clients, blobs, powerState };
}
