/** Which restore disk a VHD page blob belongs to (its metadata), and deleting it only when it is ours. */
import type { PageBlobClient } from '@azure/storage-blob';
import { FailureType, RestoreError } from '../domain/errors';
import { blobUrlForRecord } from './blob-url';
import { formatUuid, uuidFromRestoreId } from './vhd';

/** The destination blob exists with a size other than the VHD's; we never resize or clobber it. */
export class BlobSizeMismatchError extends RestoreError {
  constructor(
    readonly blobUrl: string,
    readonly expectedSize: number,
    readonly actualSize: number,
  ) {
    super(
      FailureType.AlreadyExists,
      `page blob ${blobUrlForRecord(blobUrl)} already exists with size ${actualSize}, expected ${expectedSize} ` +
        `for this disk; delete it or choose another blob name`,
    );
    this.name = 'BlobSizeMismatchError';
  }
}

/** The destination blob exists and was not made by this restore's disk: it is left exactly as it is. */
export class ForeignBlobError extends RestoreError {
  constructor(
    readonly blobUrl: string,
    readonly owner: string | undefined,
    readonly ours: string,
  ) {
    super(
      FailureType.AlreadyExists,
      owner === undefined
        ? `page blob ${blobUrlForRecord(blobUrl)} already exists and was not created by this restore (no ${VHD_UUID_METADATA_KEY} metadata, ours ${ours}); it is left untouched`
        : `page blob ${blobUrlForRecord(blobUrl)} belongs to another restore (disk uuid ${owner}, ours ${ours}); it is left untouched`,
    );
    this.name = 'ForeignBlobError';
  }
}

/** Metadata key that ties a blob to the restore disk that created it. */
export const VHD_UUID_METADATA_KEY = 'vmrestorediskuuid';

/**
 * Metadata key naming the restore that created the blob (URI-encoded: metadata values are ASCII): what
 * the sweeper matches, never the name alone.
 */
export const VHD_RESTORE_ID_METADATA_KEY = 'vmrestorerestoreid';

/**
 * Metadata key holding the upload's durable checkpoint: every non-zero byte below it is in the blob.
 * It is stored with a synchronous call, unlike a Temporal heartbeat, which the worker sends later and
 * throttled; that is what lets the uploader hold writes to checkpoint + window and so bound a resume.
 */
export const UPLOAD_CHECKPOINT_METADATA_KEY = 'vmrestoreuploadedto';

/** The disk uuid a restore's upload stamps into its blob's metadata (and the VHD footer). */
export function vhdOwnerUuid(restoreId: string, diskIndex?: number): string {
  return formatUuid(uuidFromRestoreId(restoreId, diskIndex));
}

export type OwnedBlobState = 'absent' | 'ours' | 'foreign';

/** Whether the blob exists and carries this restore disk's uuid; read before creating or deleting it. */
export async function vhdBlobOwnership(
  blobClient: Pick<PageBlobClient, 'getProperties'>,
  restoreId: string,
  diskIndex: number,
): Promise<{ state: OwnedBlobState; etag?: string; owner?: string }> {
  try {
    const p = await blobClient.getProperties();
    const owner = p.metadata?.[VHD_UUID_METADATA_KEY];
    return { state: owner === vhdOwnerUuid(restoreId, diskIndex) ? 'ours' : 'foreign', etag: p.etag, owner };
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return { state: 'absent' };
    throw err;
  }
}

/**
 * Deletes the blob only when this restore disk made it (read, check the uuid, delete if the etag is
 * unchanged): compensation never removes a blob the uploader refused as foreign. A write of ours that
 * the server was still applying when its upload was cancelled changes the etag between the read and the
 * delete; the blob is then read again, and deleted if it is still ours.
 */
export async function deleteOwnedVhdBlob(
  blobClient: Pick<PageBlobClient, 'getProperties' | 'deleteIfExists' | 'url'>,
  restoreId: string,
  diskIndex: number,
  attempts = 5,
): Promise<OwnedBlobState> {
  for (let i = 0; i < attempts; i++) {
    const o = await vhdBlobOwnership(blobClient, restoreId, diskIndex);
    if (o.state !== 'ours') return o.state;
    try {
      await blobClient.deleteIfExists({ conditions: { ifMatch: o.etag }, deleteSnapshots: 'include' });
      return 'ours';
    } catch (err) {
      // Changed since we read it: read again, it may no longer be ours.
      if ((err as { statusCode?: number }).statusCode !== 412) throw err;
    }
  }
  throw new RestoreError(
    FailureType.AzureTransient,
    `page blob ${blobUrlForRecord(blobClient.url)} changed ${attempts} times while being deleted; it is left for a retry`,
    false,
  );
}
