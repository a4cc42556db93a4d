import * as path from 'node:path';
import type * as http from 'node:http';
import * as soap from 'soap';
import { FailureType, RestoreError } from '../domain/errors';
import { TLS_TRUST_ERROR_CODES } from './tls';

/** A managed object reference, e.g. `{ type: 'VirtualMachine', value: 'vm-42' }`. */
export interface MoRef {
  type: string;
  value: string;
}

/**
 * A parsed SOAP value after {@link normalize}: data objects carry their xsi:type in `$type`,
 * references are {@link MoRef}s, and every scalar is a string.
 */
export type VimValue = string | MoRef | VimObject | VimValue[];
export interface VimObject {
  $type?: string;
  [field: string]: VimValue | undefined;
}

/** A vSphere fault (SOAP fault or failed task), with the fault's type name in `fault`. */
export class VSphereFaultError extends RestoreError {
  constructor(
    /** vim25 fault type, e.g. 'InvalidLogin', 'DuplicateName', 'InvalidPowerState'. */
    readonly fault: string,
    message: string,
    nonRetryable = !RETRYABLE_FAULTS.has(fault),
  ) {
    super(FailureType.VSphereFault, message, nonRetryable);
    this.name = 'VSphereFaultError';
  }
}

export function isFault(err: unknown, fault: string): boolean {
  return err instanceof VSphereFaultError && err.fault === fault;
}

/** Faults that say "try again later" rather than "this request is wrong". */
const RETRYABLE_FAULTS = new Set([
  'TaskInProgress',
  'HostCommunication',
  'HostNotConnected',
  'HostNotReachable',
  'NotAuthenticated',
  'RequestCanceled',
  'SystemError',
  'TransportError',
]);

const WSDL_PATH = path.join(__dirname, 'vim25.wsdl');
const VIM25_NS = 'urn:vim25';
const XSD_NS = 'http://www.w3.org/2001/XMLSchema';
const ATTRS = '$attributes';
const VALUE = '$value';

/** Wire form of a reference for node-soap: `<x type="VirtualMachine">vm-42</x>`. */
export function refArg(ref: MoRef): Record<string, unknown> {
  return { [ATTRS]: { type: ref.type }, [VALUE]: ref.value };
}

/** Wire form of a data object of a derived type: adds xsi:type so vSphere picks the subtype. */
export function typedArg(type: string, fields: Record<string, unknown>): Record<string, unknown> {
  return { [ATTRS]: { xsi_type: { type, xmlns: VIM25_NS } }, ...fields };
}

/** Wire form of an `xsd:anyType` string value (OptionValue.value). */
export function stringArg(value: string): Record<string, unknown> {
  return { [ATTRS]: { xsi_type: { type: 'string', prefix: 'xsd', xmlns: XSD_NS } }, [VALUE]: value };
}

export function isMoRef(v: unknown): v is MoRef {
  return (
    typeof v === 'object' &&
    v !== null &&
    !Array.isArray(v) &&
    typeof (v as MoRef).type === 'string' &&
    typeof (v as MoRef).value === 'string' &&
    Object.keys(v).length === 2
  );
}

export function sameRef(a: MoRef | undefined, b: MoRef | undefined): boolean {
  return !!a && !!b && a.type === b.type && a.value === b.value;
}

export function refString(ref: MoRef): string {
  return `${ref.type}:${ref.value}`;
}

/**
 * Converts node-soap's parse tree into {@link VimValue}s. vCenter writes `xsi:type`, vcsim (Go
 * encoding/xml) writes `XMLSchema-instance:type`; both become `$type`. An element with a plain `type`
 * attribute and text is a managed object reference.
 */
export function normalize(node: unknown): VimValue {
  if (node === null || node === undefined) return '';
  if (Array.isArray(node)) return node.map(normalize);
  if (typeof node !== 'object') return String(node);
  const obj = node as Record<string, unknown>;
  const attrs = (obj[ATTRS] ?? {}) as Record<string, string>;
  let xsiType: string | undefined;
  let refType: string | undefined;
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'type') refType = v;
    else if (/^[^:]+:type$/.test(k)) xsiType = v.replace(/^[^:]+:/, '');
  }
  if (refType !== undefined) return { type: refType, value: String(obj[VALUE] ?? '') };
  if (VALUE in obj) return String(obj[VALUE]);
  const out: VimObject = {};
  if (xsiType) out.$type = xsiType;
  let fields = 0;
  for (const [k, v] of Object.entries(obj)) {
    if (k === ATTRS) continue;
    out[k] = normalize(v);
    fields++;
  }
  // An empty element is an empty string (e.g. an unset annotation) unless it declares a type.
  if (fields === 0 && !xsiType) return '';
  return out;
}

/** Repeated elements parse as an array, a single one as a value, none as undefined. */
export function list<T extends VimValue = VimValue>(v: VimValue | undefined): T[] {
  if (v === undefined || v === '') return [];
  return (Array.isArray(v) ? v : [v]) as T[];
}

export function obj(v: VimValue | undefined): VimObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as VimObject) : {};
}

export function str(v: VimValue | undefined): string {
  return typeof v === 'string' ? v : '';
}

export function num(v: VimValue | undefined): number {
  const n = Number(str(v));
  return Number.isFinite(n) ? n : 0;
}

export function bool(v: VimValue | undefined): boolean {
  return str(v) === 'true' || str(v) === '1';
}

export function ref(v: VimValue | undefined): MoRef | undefined {
  return isMoRef(v) ? v : undefined;
}

/** A reference the server must have returned; its absence is an invalid response. */
export function mustRef(v: VimValue | undefined, what: string): MoRef {
  const r = ref(v);
  if (!r) throw new VSphereFaultError('InvalidResponse', `vSphere returned no ${what} reference`);
  return r;
}

/** Values of `ArrayOfX` properties (`<val xsi:type="ArrayOfX"><X>…</X></val>`) as a list. */
export function arrayOf<T extends VimValue = VimValue>(v: VimValue | undefined): T[] {
  const o = obj(v);
  if (o.$type?.startsWith('ArrayOf')) {
    // The item element is named after the item type: OptionValue, ManagedObjectReference, string…
    const key = Object.keys(o).find((k) => k !== '$type');
    return key ? list<T>(o[key]) : [];
  }
  return list<T>(v);
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Describes the call in error messages, e.g. "vm 'web01'". */
  context?: string;
}

/** node-soap's error for a SOAP fault carries the parsed envelope in `root`. */
interface SoapError extends Error {
  root?: { Envelope?: { Body?: { Fault?: { faultstring?: unknown; detail?: unknown } } } };
  response?: { status?: number; statusText?: string };
  code?: string;
}

/** One SOAP endpoint with its session cookie; every call goes through {@link VimSoap.call}. */
export class VimSoap {
  private cookie: string | undefined;

  private constructor(
    private readonly client: soap.Client,
    readonly endpoint: string,
    readonly agent: http.Agent,
    private readonly timeoutMs: number,
  ) {}

  static async create(endpoint: string, agent: http.Agent, timeoutMs: number): Promise<VimSoap> {
    const client = await soap.createClientAsync(WSDL_PATH, {
      endpoint,
      // vSphere data objects have fields named `attributes`, which node-soap's default key would shadow.
      attributesKey: ATTRS,
      valueKey: VALUE,
    });
    return new VimSoap(client, endpoint, agent, timeoutMs);
  }

  /** Cookie header value for the current session, e.g. `vmware_soap_session="52f0…"`. */
  get sessionCookie(): string | undefined {
    return this.cookie;
  }

  async call(method: string, args: Record<string, unknown>, opts: CallOptions = {}): Promise<VimValue> {
    const fn = (this.client as unknown as Record<string, unknown>)[`${method}Async`];
    if (typeof fn !== 'function') {
      throw new RestoreError(FailureType.InvalidRequest, `vim25 operation ${method} is not declared in vim25.wsdl`);
    }
    const agentKey = this.endpoint.startsWith('https:') ? 'httpsAgent' : 'httpAgent';
    let result: unknown;
    try {
      [result] = (await (fn as (a: unknown, o: unknown) => Promise<unknown[]>).call(this.client, args, {
        [agentKey]: this.agent,
        // The agent carries our TLS policy; an environment proxy would bypass it.
        proxy: false,
        timeout: this.timeoutMs,
        signal: opts.signal,
      })) as unknown[];
    } catch (err) {
      throw this.toError(method, err, opts);
    } finally {
      this.captureCookie();
    }
    return obj(normalize(result)).returnval ?? '';
  }

  /** vCenter may issue the session cookie on any response, so it is taken from each one. */
  private captureCookie(): void {
    const headers = this.client.lastResponseHeaders as Record<string, unknown> | undefined;
    const setCookie = headers?.['set-cookie'];
    for (const c of Array.isArray(setCookie) ? setCookie : setCookie ? [setCookie] : []) {
      const m = /^\s*(vmware_soap_session=[^;]*)/.exec(String(c));
      if (m && m[1] !== this.cookie) {
        this.cookie = m[1];
        this.client.clearHttpHeaders();
        this.client.addHttpHeader('Cookie', this.cookie);
      }
    }
  }

  private toError(method: string, err: unknown, opts: CallOptions): Error {
    const e = err as SoapError;
    const where = opts.context ? ` (${opts.context})` : '';
    if (opts.signal?.aborted) return opts.signal.reason instanceof Error ? opts.signal.reason : e;
    const fault = e.root?.Envelope?.Body?.Fault;
    if (fault) {
      const detail = obj(normalize(fault.detail));
      const [detailKey, detailValue] = Object.entries(detail).find(([k]) => k !== '$type') ?? [];
      const faultObj = obj(detailValue);
      const faultType = faultObj.$type ?? detailKey?.replace(/Fault$/, '') ?? 'SoapFault';
      const text = str(normalize(fault.faultstring));
      const fields = describeFault(faultObj);
      return new VSphereFaultError(faultType, `${method} failed: ${faultType}${text ? `: ${text}` : ''}${fields}${where}`);
    }
    const status = e.response?.status;
    if (status) {
      return new VSphereFaultError(
        'HttpError',
        `${method} to ${this.endpoint} failed: HTTP ${status} ${e.response?.statusText ?? ''}`.trimEnd() + where,
        !(status >= 500 || status === 429),
      );
    }
    return new VSphereFaultError(
      'TransportError',
      `${method} to ${this.endpoint} failed: ${e.code ? `${e.code} ` : ''}${e.message}${where}`,
      TLS_TRUST_ERROR_CODES.has(e.code ?? ''),
    );
  }
}

/** Scalar fields of a fault, e.g. ` [name=web01, existingState=poweredOn]`, for error messages. */
export function describeFault(fault: VimObject): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(fault)) {
    if (k === '$type' || k === 'faultMessage') continue;
    if (typeof v === 'string' && v !== '') parts.push(`${k}=${v}`);
    else if (isMoRef(v)) parts.push(`${k}=${v.value}`);
  }
  return parts.length ? ` [${parts.join(', ')}]` : '';
}
