import fs from 'node:fs';
import https from 'node:https';
import { ComputeManagementClient } from '@azure/arm-compute';
import { NetworkManagementClient } from '@azure/arm-network';

/** The credential type both management clients accept (an @azure/core-auth TokenCredential). */
export type ArmCredential = ConstructorParameters<typeof ComputeManagementClient>[0];

export interface ArmClientsOptions {
  /**
   * ARM base URL. Undefined means real Azure (https://management.azure.com) and then `credential` is required.
   * An https URL is the simulator in TLS mode; an http URL is the simulator in plain mode.
   */
  endpoint?: string;
  subscriptionId: string;
  /** PEM file of a CA to trust for `endpoint` (the simulator's lab CA), passed to the pipeline's https.Agent. */
  caCertPath?: string;
  /** Defaults to a stub token when `endpoint` is set; the simulator only checks that a Bearer token is present. */
  credential?: ArmCredential;
  /** Core pipeline retry settings (the SDK default is 3 retries, exponential from 1 s). */
  retryOptions?: { maxRetries?: number; retryDelayInMs?: number; maxRetryDelayInMs?: number };
}

export interface ArmClients {
  compute: ComputeManagementClient;
  network: NetworkManagementClient;
}

export const stubCredential: ArmCredential = {
  getToken: async () => ({ token: 'armsim-token', expiresOnTimestamp: Date.now() + 3600e3 }),
};

/** An https.Agent trusting the CA in `caCertPath` (the simulator's lab CA), for a pipeline's `agent` option. */
export function caAgent(caCertPath: string | undefined): https.Agent | undefined {
  return caCertPath ? new https.Agent({ ca: fs.readFileSync(caCertPath), keepAlive: true }) : undefined;
}

const BEARER_POLICY = 'bearerTokenAuthenticationPolicy';

/**
 * Management clients for real Azure or for the ARM simulator.
 *
 * TLS trust: with `caCertPath` the CA goes into an https.Agent handed to the core pipeline through its
 * documented `agent` option (PipelineOptions.agent, honoured by both modular clients), so no process-wide
 * NODE_EXTRA_CA_CERTS is needed. Without `caCertPath` Node's
 * trust store applies, which NODE_EXTRA_CA_CERTS can extend.
 *
 * Plain http: core-rest-pipeline refuses to send bearer tokens over http, so the clients get
 * `allowInsecureConnection` and their bearer policy is removed (the simulator then must not require auth).
 */
export function createArmClients(opts: ArmClientsOptions): ArmClients {
  if (!opts.endpoint && !opts.credential) throw new Error('createArmClients: a credential is required for real Azure');
  const credential = opts.credential ?? stubCredential;
  const insecure = opts.endpoint?.startsWith('http:') ?? false;
  const agent = caAgent(opts.caCertPath);
  const common = {
    ...(agent ? { agent } : {}),
    ...(insecure ? { allowInsecureConnection: true } : {}),
    ...(opts.retryOptions ? { retryOptions: opts.retryOptions } : {}),
  };

  const compute = new ComputeManagementClient(credential, opts.subscriptionId, {
    ...common,
    ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
  });
  const network = new NetworkManagementClient(credential, opts.subscriptionId, {
    ...common,
    ...(opts.endpoint ? { endpoint: opts.endpoint } : {}),
  });
  if (insecure) {
    compute.pipeline.removePolicy({ name: BEARER_POLICY });
    network.pipeline.removePolicy({ name: BEARER_POLICY });
  }
  return { compute, network };
}
