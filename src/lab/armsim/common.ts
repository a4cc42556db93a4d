import { ArmError } from './errors';

export interface ReqCtx {
  method: string;
  /** Raw URL path, without the query. */
  path: string;
  /** Decoded, non-empty path segments. */
  segments: string[];
  query: URLSearchParams;
  body: unknown;
  /** `scheme://host[:port]` as the client addressed the simulator; polling URLs are built on it. */
  baseUrl: string;
  apiVersion: string;
  /** Set by an `lroFailure` fault: the operation this request starts must end with this error. */
  lroFailure?: { status: number; code: string; message: string };
  /** Conditional-request headers as sent (`*` or an etag). */
  ifMatch?: string;
  ifNoneMatch?: string;
}

export interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
}

/** Azure location names are lower-case without spaces ('West Europe' is accepted as 'westeurope'). */
export function normLocation(location: string): string {
  return location.replace(/\s+/g, '').toLowerCase();
}

export function methodNotAllowed(ctx: ReqCtx): ArmError {
  return new ArmError(405, 'MethodNotAllowed', `The requested resource does not support http method '${ctx.method}'.`);
}

export function unknownRoute(ctx: ReqCtx): ArmError {
  return new ArmError(
    400,
    'InvalidResourceType',
    `The resource type could not be found for ${ctx.method} ${ctx.path} with api version '${ctx.apiVersion}' (not modelled by the ARM simulator).`,
  );
}

/**
 * ARM's conditional PUT: `If-None-Match: *` creates only (412 when the resource exists), `If-Match: *`
 * updates only (412 when it does not), `If-Match: <etag>` updates only that version of the resource.
 */
export function checkPutPreconditions(ctx: ReqCtx, existing: { id: string } | undefined, etag?: string): void {
  const fail = (message: string): never => {
    throw new ArmError(412, 'PreconditionFailed', message);
  };
  if (ctx.ifNoneMatch !== undefined) {
    if (ctx.ifNoneMatch.trim() !== '*') fail(`If-None-Match supports only '*', got '${ctx.ifNoneMatch}'.`);
    if (existing) fail(`The resource '${existing.id}' already exists and the request carried If-None-Match: *.`);
  }
  if (ctx.ifMatch !== undefined) {
    const wanted = ctx.ifMatch.trim();
    if (!existing) fail(`The resource does not exist and the request carried If-Match: ${wanted}.`);
    if (wanted !== '*' && wanted !== etag) {
      fail(`Etag provided in if-match header ${wanted} does not match etag ${etag ?? '(none)'} of resource.`);
    }
  }
}

/** A filter for a collection list: records in resource group `rgName`, or every record when it is undefined. */
export function inResourceGroup(rgName: string | undefined): (r: { resourceGroup: string }) => boolean {
  const want = rgName?.toLowerCase();
  return (r) => want === undefined || r.resourceGroup.toLowerCase() === want;
}
