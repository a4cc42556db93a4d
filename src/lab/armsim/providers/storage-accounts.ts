/** Microsoft.Storage/storageAccounts: read-only accounts bound to the lab's blob service. */

import { methodNotAllowed, type Reply, type ReqCtx, unknownRoute } from '../common';
import { resourceNotFound } from '../errors';
import type { Json } from '../util';
import type { StorageAccountRec } from '../state';
import type { SimContext } from '../context';
import type { ResourceProvider } from '../context';
import { inResourceGroup } from '../common';

function storageAccountsRoute(sim: SimContext, ctx: ReqCtx, rg: string, name: string, rest: string[]): Reply {
  const { rgName, k } = sim.itemTarget(ctx, rg, name, 'Microsoft.Storage', 'storageAccounts');
  const acct = sim.state.storageAccounts[k];
  if (!acct) throw resourceNotFound('Microsoft.Storage/storageAccounts', name, rgName);
  if (rest.length === 0 && ctx.method === 'GET') return { status: 200, body: renderStorageAccount(acct) };
  if (rest.length === 1 && rest[0] === 'listkeys' && ctx.method === 'POST') {
    return {
      status: 200,
      body: {
        keys: [
          { keyName: 'key1', value: acct.blobAccountKey, permissions: 'FULL' },
          { keyName: 'key2', value: acct.blobAccountKey, permissions: 'FULL' },
        ],
      },
    };
  }
  if (rest.length === 0) throw methodNotAllowed(ctx);
  throw unknownRoute(ctx);
}

export function renderStorageAccount(a: StorageAccountRec): Json {
  return {
    id: a.id,
    name: a.name,
    type: 'Microsoft.Storage/storageAccounts',
    location: a.location,
    kind: 'StorageV2',
    sku: { name: 'Standard_LRS', tier: 'Standard' },
    properties: {
      provisioningState: 'Succeeded',
      primaryEndpoints: { blob: a.blobEndpoint },
      primaryLocation: a.location,
      statusOfPrimary: 'available',
      accessTier: 'Hot',
      supportsHttpsTrafficOnly: a.blobEndpoint.startsWith('https:'),
      allowBlobPublicAccess: false,
      minimumTlsVersion: 'TLS1_2',
    },
  };
}

export const storageAccountsProvider: ResourceProvider = {
  type: 'microsoft.storage/storageaccounts',
  route: storageAccountsRoute,
  list: (sim, rgName) => Object.values(sim.state.storageAccounts).filter(inResourceGroup(rgName)).map(renderStorageAccount),
};
