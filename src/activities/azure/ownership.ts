/** Resources a restore creates carry its id in a tag; only such resources are ever updated or deleted. */
import type { AzurePlan } from '../../domain/azure';
import { FailureType, RestoreError } from '../../domain/errors';
import { armFailure, isNotFound, isPreconditionFailed } from './arm-errors';

export const RESTORE_TAG = 'vmrestoreRestoreId';

/** Azure tag values hold at most 256 characters; the restore id is one. */
export const MAX_TAG_VALUE = 256;

type Tagged = () => Promise<{ tags?: Record<string, string> }>;

export function alreadyExists(kind: string, name: string, resourceGroup: string, owner: string | undefined): RestoreError {
  return new RestoreError(
    FailureType.AlreadyExists,
    `${kind} '${name}' already exists in resource group '${resourceGroup}' and was not created by this restore ` +
      `(${owner ? `tag ${RESTORE_TAG}=${owner}` : `no ${RESTORE_TAG} tag`}); it is left untouched: choose another --vm-name or remove it`,
  );
}

/** The restore id a resource is tagged with; undefined (absent) when there is no such resource. */
export async function ownerOf(get: Tagged, what: string): Promise<{ owner?: string } | undefined> {
  try {
    const r = await get();
    return { owner: r.tags?.[RESTORE_TAG] };
  } catch (err) {
    if (isNotFound(err)) return undefined;
    armFailure(`reading ${what}`, err);
  }
}

/**
 * Creates a resource only if it is absent (If-None-Match: *) or updates it only if this restore made it:
 * a resource of the same name made by anyone else is an AlreadyExists error and is not touched.
 */
export async function createOwned<T>(
  kind: string,
  name: string,
  plan: AzurePlan,
  get: Tagged,
  put: (onlyIfAbsent: boolean) => Promise<T>,
): Promise<T> {
  const what = `${kind} '${name}'`;
  const found = await ownerOf(get, what);
  if (found && found.owner !== plan.restoreId) throw alreadyExists(kind, name, plan.resourceGroup, found.owner);
  try {
    return await put(!found);
  } catch (err) {
    if (!isPreconditionFailed(err)) armFailure(`creating ${what}`, err);
    // Someone created it between our read and our write: ours only if a parallel attempt of this restore did.
    const now = await ownerOf(get, what);
    if (now?.owner !== plan.restoreId) throw alreadyExists(kind, name, plan.resourceGroup, now?.owner);
    try {
      return await put(false);
    } catch (again) {
      armFailure(`creating ${what}`, again);
    }
  }
}

/** Deletes a resource only when it carries this restore's tag (read, check, delete). */
export async function deleteOwned(kind: string, name: string, plan: AzurePlan, get: Tagged, del: () => Promise<unknown>): Promise<void> {
  const found = await ownerOf(get, `${kind} '${name}'`);
  if (!found || found.owner !== plan.restoreId) return;
  try {
    await del();
  } catch (err) {
    if (!isNotFound(err)) armFailure(`deleting ${kind} '${name}'`, err);
  }
}
