import { randomBytes, randomUUID } from 'node:crypto';
import { ArmError } from './errors';

export type Json = Record<string, unknown>;

export const uuid = (): string => randomUUID();
export const hex = (bytes: number): string => randomBytes(bytes).toString('hex');
export const nowIso = (): string => new Date().toISOString();

export function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The object at `v`, `{}` when absent, or an ARM content error when it has another type. */
export function objectAt(v: unknown, where: string): Json {
  if (v === undefined || v === null) return {};
  if (!isObject(v)) throw invalidContent(`'${where}' must be an object`);
  return v;
}

export function optObject(v: unknown, where: string): Json | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw invalidContent(`'${where}' must be an object`);
  return v;
}

export function optString(v: unknown, where: string): string | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw invalidContent(`'${where}' must be a string`);
  return v;
}

export function optNumber(v: unknown, where: string): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidContent(`'${where}' must be a number`);
  return v;
}

export function optBoolean(v: unknown, where: string): boolean | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw invalidContent(`'${where}' must be a boolean`);
  return v;
}

export function optArray(v: unknown, where: string): unknown[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v)) throw invalidContent(`'${where}' must be an array`);
  return v;
}

export function optTags(v: unknown): Record<string, string> | undefined {
  if (v === undefined || v === null) return undefined;
  if (!isObject(v)) throw invalidContent("'tags' must be an object");
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) out[k] = String(val);
  return out;
}

/** ARM's reply to a body that does not match the resource schema. */
export function invalidContent(detail: string): ArmError {
  return new ArmError(400, 'InvalidRequestContent', `The request content was invalid and could not be deserialized: '${detail}'.`);
}

/** Case-insensitive match against a closed set of enum values, returning the canonical spelling. */
export function enumValue<T extends string>(v: string | undefined, allowed: readonly T[]): T | undefined {
  if (v === undefined) return undefined;
  return allowed.find((a) => a.toLowerCase() === v.toLowerCase());
}

/** JSON merge for PATCH bodies: objects merge recursively, everything else (arrays too) replaces. */
export function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const out: Json = isObject(target) ? { ...target } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** A copy of `o` without the given keys (case-insensitive) and without undefined values. */
export function withoutKeys(o: Json, keys: string[]): Json {
  const drop = new Set(keys.map((k) => k.toLowerCase()));
  const out: Json = {};
  for (const [k, v] of Object.entries(o)) if (!drop.has(k.toLowerCase()) && v !== undefined) out[k] = v;
  return out;
}

/** Stable JSON for equality checks of normalised specs (object keys sorted). */
export function canonicalJson(v: unknown): string {
  return JSON.stringify(v, (_k, val: unknown) =>
    isObject(val) ? Object.fromEntries(Object.entries(val).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : val,
  );
}

export interface ParsedId {
  subscriptionId: string;
  resourceGroup: string;
  provider: string;
  type: string;
  name: string;
  /** Child type/name pairs after the top-level resource, e.g. subnets. */
  children: Array<{ type: string; name: string }>;
}

/** Parses `/subscriptions/{s}/resourceGroups/{rg}/providers/{ns}/{type}/{name}[/{child}/{name}...]`. */
export function parseResourceId(id: string): ParsedId | undefined {
  const seg = id.split('/').filter((p) => p.length > 0);
  if (seg.length < 8 || seg.length % 2 !== 0) return undefined;
  if (seg[0].toLowerCase() !== 'subscriptions' || seg[2].toLowerCase() !== 'resourcegroups') return undefined;
  if (seg[4].toLowerCase() !== 'providers') return undefined;
  const children: Array<{ type: string; name: string }> = [];
  for (let i = 8; i < seg.length; i += 2) children.push({ type: seg[i], name: seg[i + 1] });
  return {
    subscriptionId: seg[1],
    resourceGroup: seg[3],
    provider: seg[5],
    type: seg[6],
    name: seg[7],
    children,
  };
}

export function resourceId(subscriptionId: string, resourceGroup: string, provider: string, type: string, name: string): string {
  return `/subscriptions/${subscriptionId}/resourceGroups/${resourceGroup}/providers/${provider}/${type}/${name}`;
}

/** Valid names for compute and network resources: 1-80 characters, alphanumerics, '_', '-', '.'. */
export function checkResourceName(name: string, type: string): void {
  if (name.length > 80 || !/^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$/.test(name)) {
    throw new ArmError(
      400,
      'InvalidResourceName',
      `Resource name ${name} is invalid. The name can be up to 80 characters long. It must begin with a word character, and it must end with a word character or with '_'. The name may contain word characters or '.', '-', '_'.`,
      { target: type },
    );
  }
}

export function ipToInt(ip: string): number {
  const p = ip.split('.').map((x) => Number.parseInt(x, 10));
  if (p.length !== 4 || p.some((x) => !(x >= 0 && x <= 255))) throw new Error(`bad IPv4 address ${ip}`);
  return ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
}

export const intToIp = (n: number): string => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');

export function parseCidr(cidr: string): { base: number; size: number } | undefined {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(cidr.trim());
  if (!m) return undefined;
  const bits = Number(m[2]);
  if (bits < 8 || bits > 29) return undefined;
  const size = 2 ** (32 - bits);
  const base = Math.floor(ipToInt(m[1]) / size) * size;
  return { base, size };
}

export function ipInCidr(ip: string, cidr: string): boolean {
  const c = parseCidr(cidr);
  if (!c) return false;
  const n = ipToInt(ip);
  return n >= c.base && n < c.base + c.size;
}

/** Locally administered MAC in Azure's dash-separated upper-case notation. */
export function randomMac(): string {
  const b = randomBytes(6);
  b[0] = (b[0] & 0xfc) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0').toUpperCase()).join('-');
}
