import fs from 'node:fs';
import { ClientSecretCredential, DefaultAzureCredential, type TokenCredential } from '@azure/identity';
import { FailureType, RestoreError } from '../domain/errors';
import { caAgent, createArmClients, type ArmClients, type ArmClientsOptions } from './arm-clients';

/** How the worker signs in to Azure Resource Manager. */
export type AzureCredentialConfig =
  /** An app registration (service principal) with a client secret, read from an env variable or a file. */
  | {
      type: 'clientSecret';
      tenantId: string;
      clientId: string;
      clientSecretEnv?: string;
      clientSecretFile?: string;
      /** Identity platform host; login.microsoftonline.com by default (the lab points it at its simulator). */
      authorityHost?: string;
    }
  /** @azure/identity's DefaultAzureCredential: AZURE_* environment, workload or managed identity, az CLI. */
  | { type: 'default' }
  /** A ready bearer token in an environment variable (short-lived: for trying things out). */
  | { type: 'tokenEnv'; env: string };

function readSecret(cfg: Extract<AzureCredentialConfig, { type: 'clientSecret' }>, env: NodeJS.ProcessEnv): string {
  if (cfg.clientSecretEnv) {
    const v = env[cfg.clientSecretEnv];
    if (!v)
      throw new RestoreError(
        FailureType.Configuration,
        `azure.credential.clientSecretEnv: environment variable ${cfg.clientSecretEnv} is not set`,
      );
    return v;
  }
  if (cfg.clientSecretFile) {
    try {
      return fs.readFileSync(cfg.clientSecretFile, 'utf8').trim();
    } catch (err) {
      throw new RestoreError(
        FailureType.Configuration,
        `azure.credential.clientSecretFile: cannot read ${cfg.clientSecretFile}: ${(err as Error).message}`,
      );
    }
  }
  throw new RestoreError(
    FailureType.Configuration,
    'azure.credential: a clientSecret credential needs clientSecretEnv or clientSecretFile',
  );
}

/**
 * The TokenCredential for the management clients. `caCertPath` is trusted for the identity endpoint too
 * (through the pipeline's documented `agent` option), so the lab's simulated sign-in needs no
 * process-wide NODE_EXTRA_CA_CERTS.
 */
export function createAzureCredential(
  cfg: AzureCredentialConfig,
  opts: { caCertPath?: string; env?: NodeJS.ProcessEnv } = {},
): TokenCredential {
  const env = opts.env ?? process.env;
  switch (cfg.type) {
    case 'clientSecret': {
      const agent = caAgent(opts.caCertPath);
      return new ClientSecretCredential(cfg.tenantId, cfg.clientId, readSecret(cfg, env), {
        ...(cfg.authorityHost ? { authorityHost: cfg.authorityHost, disableInstanceDiscovery: true } : {}),
        ...(agent ? { agent } : {}),
      });
    }
    case 'default':
      return new DefaultAzureCredential();
    case 'tokenEnv':
      return {
        getToken: async () => {
          const token = env[cfg.env];
          if (!token) throw new RestoreError(FailureType.Configuration, `azure.credential: environment variable ${cfg.env} holds no token`);
          // The token's real expiry is unknown here; report it as fresh and let ARM refuse it when stale.
          return { token, expiresOnTimestamp: Date.now() + 5 * 60_000 };
        },
      };
  }
}

/** Where and how to reach ARM: the fields of an Azure target's configuration the clients need. */
export interface ArmTarget {
  subscriptionId: string;
  /** ARM endpoint; absent means https://management.azure.com. */
  armEndpoint?: string;
  caCertPath?: string;
  credential?: AzureCredentialConfig;
}

/**
 * Management clients for an Azure target as configured: its endpoint, CA and sign-in. The simulator without
 * a configured credential takes any bearer token; real Azure without one uses DefaultAzureCredential.
 */
export function armClientsFor(a: ArmTarget, retryOptions?: ArmClientsOptions['retryOptions']): ArmClients {
  const credential = a.credential ?? (a.armEndpoint ? undefined : { type: 'default' as const });
  return createArmClients({
    endpoint: a.armEndpoint,
    subscriptionId: a.subscriptionId,
    caCertPath: a.caCertPath,
    credential: credential ? createAzureCredential(credential, { caCertPath: a.caCertPath }) : undefined,
    retryOptions,
  });
}
