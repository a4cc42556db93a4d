import { FailureType, RestoreError } from './errors';
import { validateVerifyFields } from './verification';

/**
 * vSphere display names: 1-80 characters, no path separators, wildcards or control characters, and not
 * '.' or '..' (the name becomes the VM's folder on the datastore).
 */
export function validateVSphereVmName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new RestoreError(FailureType.InvalidRequest, 'VM name is required');
  }
  if (name.length > 80) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `VM name '${name.slice(0, 20)}…' is ${name.length} characters; vSphere allows at most 80`,
    );
  }
  // eslint-disable-next-line no-control-regex
  const bad = /[\\/%*?"<>|\x00-\x1f\x7f-\x9f\u2028\u2029]/.exec(name);
  if (bad) {
    const shown = /[\\/%*?"<>|]/.test(bad[0]) ? bad[0] : `\\u${bad[0].charCodeAt(0).toString(16).padStart(4, '0')}`;
    throw new RestoreError(
      FailureType.InvalidRequest,
      `VM name ${JSON.stringify(name)} contains '${shown}', which is not allowed (no / \\ % * ? " < > | or control characters)`,
    );
  }
  if (name === '.' || name === '..') {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `VM name '${name}' is not allowed: it would name a directory outside the VM's folder`,
    );
  }
  if (name.trim() !== name) {
    throw new RestoreError(FailureType.InvalidRequest, `VM name '${name}' must not start or end with spaces`);
  }
}

/**
 * ARM virtual machine names: 1-64 characters (Windows: 1-15, the computer name), letters, digits,
 * '-', '_' and '.', not starting with '_' nor ending with '.' or '-'; Windows names have no '.' or '_'
 * and are not all digits.
 */
export function validateAzureVmName(name: unknown, osType: 'Windows' | 'Linux'): asserts name is string {
  const fail = (why: string): never => {
    throw new RestoreError(FailureType.InvalidRequest, `Azure VM name '${String(name)}' is invalid: ${why}`);
  };
  if (typeof name !== 'string' || name.length === 0) fail('a name is required');
  const n = name as string;
  const max = osType === 'Windows' ? 15 : 64;
  if (n.length > max) fail(`${n.length} characters; ${osType} VMs allow at most ${max}`);
  if (!/^[A-Za-z0-9._-]+$/.test(n)) fail("only letters, digits, '-', '_' and '.' are allowed");
  if (n.startsWith('_')) fail("it must not start with '_'");
  if (/[.-]$/.test(n)) fail("it must not end with '.' or '-'");
  if (osType === 'Windows') {
    if (/[._]/.test(n)) fail("Windows computer names cannot contain '.' or '_'");
    if (/^\d+$/.test(n)) fail('Windows computer names cannot be all digits');
  }
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const shown = (v: unknown): string => {
  const s = typeof v === 'string' ? JSON.stringify(v) : typeof v === 'bigint' ? `${v}n` : (JSON.stringify(v) ?? String(v));
  return s.length > 60 ? `${s.slice(0, 57)}…` : s;
};
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

function badField(field: string, why: string): never {
  throw new RestoreError(FailureType.InvalidRequest, `request field ${field}: ${why}`);
}

/** Runs a check whose errors do not say which field they are about, and prefixes the field name. */
function inField(field: string, check: () => void): void {
  try {
    check();
  } catch (err) {
    if (err instanceof RestoreError) throw new RestoreError(err.type, `request field ${field}: ${err.message}`, err.nonRetryable);
    throw err;
  }
}

function optText(
  req: Record<string, unknown>,
  field: string,
  opts: { max: number; pattern?: RegExp; hint?: string; required?: boolean },
): void {
  const v = req[field];
  if (v === undefined && !opts.required) return;
  if (typeof v !== 'string') badField(field, `expected a string, got ${shown(v)}`);
  if (v.length === 0) badField(field, 'must not be empty');
  if (v.length > opts.max) badField(field, `is ${v.length} characters; at most ${opts.max} are allowed`);
  if (CONTROL.test(v)) badField(field, `${shown(v)} contains control characters`);
  if (opts.pattern && !opts.pattern.test(v)) badField(field, `${shown(v)} is not valid${opts.hint ? ` (${opts.hint})` : ''}`);
}

function optBool(req: Record<string, unknown>, field: string): void {
  const v = req[field];
  if (v !== undefined && typeof v !== 'boolean') badField(field, `expected true or false, got ${shown(v)}`);
}

function optOneOf(req: Record<string, unknown>, field: string, allowed: readonly unknown[]): void {
  const v = req[field];
  if (v !== undefined && !allowed.includes(v)) badField(field, `${shown(v)} is not one of ${allowed.map((a) => String(a)).join(', ')}`);
}

/** A restore's shared limits: an object of the given keys, each a whole number from 1 to 1000. */
function optLimits(req: Record<string, unknown>, keys: readonly string[]): void {
  const v = req.limits;
  if (v === undefined) return;
  if (!isRecord(v)) badField('limits', `expected an object with ${keys.join(', ')}, got ${shown(v)}`);
  for (const [k, n] of Object.entries(v)) {
    if (!keys.includes(k)) badField(`limits.${k}`, `is not a limit of this target (known: ${keys.join(', ')})`);
    if (n !== undefined && (!Number.isSafeInteger(n) || (n as number) < 1 || (n as number) > 1000)) {
      badField(`limits.${k}`, `expected a whole number from 1 to 1000, got ${shown(n)}`);
    }
  }
}

const RESTORE_POINT_ID = { max: 128, pattern: /^[A-Za-z0-9._-]+$/, hint: "letters, digits, '.', '_' and '-'", required: true };
const INVENTORY_NAME = { max: 255 };

function checkCommon(req: unknown): Record<string, unknown> {
  if (!isRecord(req)) throw new RestoreError(FailureType.InvalidRequest, `restore request must be an object, got ${shown(req)}`);
  optText(req, 'restoreId', { max: 512 });
  optText(req, 'restorePointId', RESTORE_POINT_ID);
  optText(req, 'proxy', INVENTORY_NAME);
  optBool(req, 'keepOnFailure');
  validateVerifyFields(req);
  return req;
}

/**
 * Shape and bounds of every field of a vSphere restore request, before anything looks anything up:
 * a request that arrives through Temporal is JSON of any shape, and each problem names its field.
 */
export function validateVSphereRestoreRequest(raw: unknown, transports: readonly string[], diskFormats: readonly string[]): void {
  const req = checkCommon(raw);
  inField('vmName', () => validateVSphereVmName(req.vmName));
  for (const f of ['profile', 'datacenter', 'datastore', 'resourcePool']) optText(req, f, INVENTORY_NAME);
  optText(req, 'folder', { max: 1024 });
  optOneOf(req, 'transport', transports);
  optOneOf(req, 'diskFormat', diskFormats);
  optBool(req, 'powerOn');
  if (req.networkMap !== undefined) {
    if (!isRecord(req.networkMap))
      badField('networkMap', `expected an object of source → target network names, got ${shown(req.networkMap)}`);
    const entries = Object.entries(req.networkMap);
    if (entries.length > 256) badField('networkMap', `has ${entries.length} entries; at most 256 are allowed`);
    for (const [src, dst] of entries) {
      if (src.length === 0 || src.length > 255 || CONTROL.test(src))
        badField('networkMap', `source network ${shown(src)} is not a valid network name`);
      if (typeof dst !== 'string' || dst.length === 0 || dst.length > 255 || CONTROL.test(dst)) {
        badField(`networkMap[${shown(src)}]`, `target network ${shown(dst)} is not a valid network name`);
      }
    }
  }
  const t = req.throttleMBps;
  if (t !== undefined && (typeof t !== 'number' || !Number.isFinite(t) || t < 0 || t > 1_000_000)) {
    badField('throttleMBps', `expected a number of MB/s from 0 (unlimited) to 1000000, got ${shown(t)}`);
  }
  const c = req.diskConcurrency;
  if (c !== undefined && (!Number.isSafeInteger(c) || (c as number) < 1 || (c as number) > 64)) {
    badField('diskConcurrency', `expected an integer from 1 to 64, got ${shown(c)}`);
  }
  optLimits(req, ['disksPerHost', 'disksPerDatastore']);
  const w = req.proxyWaitSeconds;
  if (w !== undefined && (!Number.isSafeInteger(w) || (w as number) < 1 || (w as number) > 7 * 86400)) {
    badField('proxyWaitSeconds', `expected a whole number of seconds from 1 to 604800, got ${shown(w)}`);
  }
}

/** Shape and bounds of every field of an Azure restore request; the name rules that need the guest OS follow later. */
export function validateAzureRestoreRequest(raw: unknown): void {
  const req = checkCommon(raw);
  optText(req, 'vmName', { max: 64, required: true });
  // Linux rules are the looser ones; a Windows guest's stricter computer-name rules are checked once it is known.
  inField('vmName', () => validateAzureVmName(req.vmName, 'Linux'));
  optText(req, 'resourceGroup', {
    max: 90,
    pattern: /^[-\w.()]*[-\w()]$/u,
    hint: "letters, digits, '_', '-', '.', '(' and ')', not ending with '.'",
  });
  optText(req, 'location', { max: 64, pattern: /^[A-Za-z0-9 ]+$/, hint: 'an Azure region name such as westeurope' });
  optText(req, 'vmSize', { max: 64, pattern: /^[A-Za-z0-9_-]+$/, hint: 'a size name such as Standard_D2s_v5' });
  optText(req, 'subnetId', { max: 1024 });
  optOneOf(req, 'generation', [1, 2]);
  optBool(req, 'skipGuestPreparation');
  optLimits(req, ['uploadsPerStorageAccount', 'restoresPerRegion']);
}
