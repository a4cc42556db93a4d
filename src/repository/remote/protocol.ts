/**
 * The data mover's HTTPS API (`vmrestore repository serve`), shared by server and client. Every request
 * carries `Authorization: Bearer <token>`.
 *
 *   GET /v1/restore-points                         → RestorePointSummary[] (JSON)
 *   GET /v1/restore-points/<id or prefix>          → RestorePoint (JSON, block maps included)
 *   GET /v1/restore-points/<id>/disks/<n>/chunks?from=<block>&to=<block>[&step=<n>]
 *       → the stored chunks of blocks from, from+step, … below to, in block order (all-zero blocks have
 *         none; several streams with one step each read their share of a disk in parallel), each as one
 *         frame: status (u8), block index (u32 BE), length (u32 BE), then `length` bytes: the chunk for
 *         status ok, else a UTF-8 reason, and the stream ends there.
 *
 * Errors are JSON `{ type, message, retryable }` with a 4xx/5xx status; `type` is a FailureType.
 */
import { readFileSync, statSync } from 'node:fs';
import { FailureType, RestoreError } from '../../domain/errors';
import type { RepositoryConfig } from '../../config/schema';

export const API_PREFIX = '/v1/restore-points';
export const CHUNK_STREAM_TYPE = 'application/vnd.vmrestore.chunks';

export const FrameStatus = { Ok: 0, Missing: 1, Corrupt: 2 } as const;
export type FrameStatus = (typeof FrameStatus)[keyof typeof FrameStatus];
export const FRAME_HEADER_BYTES = 9;

export function frameHeader(status: FrameStatus, blockIndex: number, length: number): Buffer {
  const h = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  h.writeUInt8(status, 0);
  h.writeUInt32BE(blockIndex, 1);
  h.writeUInt32BE(length, 5);
  return h;
}

export const restorePointsUrlPath = (): string => API_PREFIX;
export const restorePointUrlPath = (idOrPrefix: string): string => `${API_PREFIX}/${encodeURIComponent(idOrPrefix)}`;
export const chunksUrlPath = (id: string, diskIndex: number, fromBlock: number, toBlock: number, step = 1): string =>
  `${API_PREFIX}/${encodeURIComponent(id)}/disks/${diskIndex}/chunks?from=${fromBlock}&to=${toBlock}${step === 1 ? '' : `&step=${step}`}`;
export const MAX_STEP = 64;

export interface ErrorBody {
  type: string;
  message: string;
  retryable: boolean;
}

const MIN_TOKEN_LENGTH = 16;

/**
 * The bearer token both sides share, read in the process that uses it from `repository.tokenFile` (mode 600)
 * or the variable `repository.tokenEnv` names; it never travels in requests to Temporal.
 */
export function loadRepositoryToken(repo: RepositoryConfig, env: NodeJS.ProcessEnv = process.env): string {
  let token: string;
  let source: string;
  if (repo.tokenEnv) {
    source = `repository.tokenEnv (${repo.tokenEnv})`;
    token = (env[repo.tokenEnv] ?? '').trim();
    if (!token) throw new RestoreError(FailureType.Configuration, `config ${source}: the environment variable is not set`);
  } else if (repo.tokenFile) {
    source = `repository.tokenFile (${repo.tokenFile})`;
    try {
      const mode = statSync(repo.tokenFile).mode;
      if (mode & 0o077) {
        throw new RestoreError(
          FailureType.Configuration,
          `config ${source}: the file is readable by others (mode ${(mode & 0o777).toString(8)}): chmod 600 it`,
        );
      }
      token = readFileSync(repo.tokenFile, 'utf8').trim();
    } catch (err) {
      if (err instanceof RestoreError) throw err;
      throw new RestoreError(FailureType.Configuration, `config ${source}: ${(err as Error).message}`);
    }
  } else {
    throw new RestoreError(FailureType.Configuration, 'config repository: needs tokenFile or tokenEnv (the data mover bearer token)');
  }
  if (token.length < MIN_TOKEN_LENGTH) {
    throw new RestoreError(FailureType.Configuration, `config ${source}: the token must be at least ${MIN_TOKEN_LENGTH} characters`);
  }
  return token;
}
