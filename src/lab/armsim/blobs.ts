import { BlobServiceClient, StorageSharedKeyCredential, type PageBlobClient } from '@azure/storage-blob';
import type { StorageAccountRec } from './state';
import { VHD_FOOTER_SIZE } from './vhd';

export interface SourceBlobInfo {
  exists: boolean;
  blobType?: string;
  size?: number;
  /** The last 512 bytes, read only for page blobs that are large enough to hold a footer. */
  footer?: Buffer;
}

/** Splits a blob URL under the account's endpoint into container and blob name, or undefined if it is elsewhere. */
export function blobPathInAccount(account: StorageAccountRec, sourceUri: string): { container: string; blob: string } | undefined {
  let src: URL;
  let base: URL;
  try {
    src = new URL(sourceUri);
    base = new URL(account.blobEndpoint);
  } catch {
    return undefined;
  }
  if (src.protocol !== base.protocol || src.host.toLowerCase() !== base.host.toLowerCase()) return undefined;
  const basePath = base.pathname.endsWith('/') ? base.pathname : `${base.pathname}/`;
  if (!src.pathname.startsWith(basePath)) return undefined;
  const rest = src.pathname.slice(basePath.length);
  const slash = rest.indexOf('/');
  if (slash <= 0 || slash === rest.length - 1) return undefined;
  return { container: decodeURIComponent(rest.slice(0, slash)), blob: decodeURIComponent(rest.slice(slash + 1)) };
}

/** Reads what disk import needs to know about a blob, the way the disk RP would with the account key. */
export class BlobInspector {
  private readonly clients = new Map<string, BlobServiceClient>();

  async inspect(account: StorageAccountRec, container: string, blob: string): Promise<SourceBlobInfo> {
    const client = this.serviceClient(account).getContainerClient(container).getBlobClient(blob);
    let props;
    try {
      props = await client.getProperties();
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return { exists: false };
      throw err;
    }
    const size = props.contentLength ?? 0;
    const info: SourceBlobInfo = { exists: true, blobType: props.blobType, size };
    if (props.blobType === 'PageBlob' && size >= VHD_FOOTER_SIZE) {
      info.footer = await client.downloadToBuffer(size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE);
    }
    return info;
  }

  /** The page blob behind an import source, read with the account key. */
  pageBlob(account: StorageAccountRec, container: string, blob: string): PageBlobClient {
    return this.serviceClient(account).getContainerClient(container).getPageBlobClient(blob);
  }

  private serviceClient(account: StorageAccountRec): BlobServiceClient {
    const cacheKey = `${account.blobEndpoint}|${account.blobAccountName}`;
    let c = this.clients.get(cacheKey);
    if (!c) {
      c = new BlobServiceClient(account.blobEndpoint, new StorageSharedKeyCredential(account.blobAccountName, account.blobAccountKey), {
        retryOptions: { maxTries: 2 },
      });
      this.clients.set(cacheKey, c);
    }
    return c;
  }
}
