/** The simulator's resource types: `namespace/type` (lower case, as in request paths) → its provider. */
import type { OperationKind } from './state';
import type { ResourceProvider } from './context';
import { disksProvider } from './providers/disks';
import { nicsProvider } from './providers/nics';
import { storageAccountsProvider } from './providers/storage-accounts';
import { vmsProvider } from './providers/vms';
import { vnetsProvider } from './providers/vnets';

export const PROVIDERS: ReadonlyMap<string, ResourceProvider> = new Map(
  [disksProvider, vmsProvider, nicsProvider, vnetsProvider, storageAccountsProvider].map((p) => [p.type, p]),
);

/** Which provider completes each kind of long-running operation. */
export const COMPLETERS: ReadonlyMap<OperationKind, ResourceProvider> = new Map(
  [...PROVIDERS.values()].flatMap((p) => (p.completes ?? []).map((k) => [k, p] as const)),
);
