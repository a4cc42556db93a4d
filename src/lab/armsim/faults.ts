/**
 * Run-time fault injection. Rules are checked in order against every ARM request (admin endpoints are
 * exempt); the first rule that fires decides the reply, except `delay` rules, which only add latency.
 *
 * - throttle:   429 with Retry-After and ARM's throttling body; the SDK retry policy honours it.
 * - transient:  500 or 503 (default 503, with Retry-After); the SDK retries these with backoff.
 * - error:      any status/code/message; 4xx is not retried by the SDK.
 * - quota:      409 OperationNotAllowed with CRP's cores-quota message for the VM size in the body.
 * - lroFailure: the request is accepted, but its long-running operation ends `Failed` with code/message.
 * - delay:      waits `delayMs` before handling the request.
 * - disconnect: destroys the socket without a reply (a network error for the client).
 */
export const FAULT_KINDS = ['throttle', 'transient', 'error', 'quota', 'lroFailure', 'delay', 'disconnect'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

export interface FaultRule {
  id?: string;
  /** HTTP method to match (case-insensitive); all methods when absent. */
  method?: string;
  /** Regular expression tested (case-insensitively) against the URL path without the query. */
  pathPattern?: string;
  kind: FaultKind;
  status?: number;
  code?: string;
  message?: string;
  retryAfterSeconds?: number;
  /** Fire at most this many times; unlimited when absent. */
  count?: number;
  /** Chance (0..1) that a matching request fires the rule. */
  probability?: number;
  /** Let this many matching requests through before the rule starts to fire. */
  skip?: number;
  delayMs?: number;
}

export interface ActiveFault extends FaultRule {
  id: string;
  seen: number;
  fired: number;
}

export class FaultBook {
  private rules: Array<ActiveFault & { regex?: RegExp }> = [];
  private seq = 0;

  set(rules: FaultRule[], append = false): ActiveFault[] {
    const parsed = rules.map((r) => this.validate(r));
    this.rules = append ? [...this.rules, ...parsed] : parsed;
    return this.list();
  }

  clear(): void {
    this.rules = [];
  }

  list(): ActiveFault[] {
    return this.rules.map(({ regex: _regex, ...r }) => r);
  }

  /** Delay to apply and the terminal rule (if any) that fires for this request. */
  match(method: string, path: string): { delayMs: number; rule?: ActiveFault } {
    let delayMs = 0;
    for (const r of this.rules) {
      if (r.method && r.method.toUpperCase() !== method.toUpperCase()) continue;
      if (r.regex && !r.regex.test(path)) continue;
      // An operation failure only makes sense for requests that start an operation.
      if (r.kind === 'lroFailure' && method.toUpperCase() === 'GET') continue;
      r.seen++;
      if (r.seen <= (r.skip ?? 0)) continue;
      if (r.count !== undefined && r.fired >= r.count) continue;
      if (r.probability !== undefined && Math.random() >= r.probability) continue;
      r.fired++;
      if (r.kind === 'delay') {
        delayMs += r.delayMs ?? 1000;
        continue;
      }
      return { delayMs, rule: r };
    }
    return { delayMs };
  }

  private validate(r: FaultRule): ActiveFault & { regex?: RegExp } {
    if (typeof r !== 'object' || r === null) throw new Error('each rule must be an object');
    if (!FAULT_KINDS.includes(r.kind)) throw new Error(`unknown fault kind '${String(r.kind)}'; use one of ${FAULT_KINDS.join(', ')}`);
    let regex: RegExp | undefined;
    if (r.pathPattern !== undefined) {
      try {
        regex = new RegExp(r.pathPattern, 'i');
      } catch (err) {
        throw new Error(`bad pathPattern: ${(err as Error).message}`);
      }
    }
    if (r.status !== undefined && !(Number.isInteger(r.status) && r.status >= 400 && r.status <= 599)) {
      throw new Error('status must be an HTTP error status (400-599)');
    }
    if (r.probability !== undefined && !(r.probability >= 0 && r.probability <= 1)) {
      throw new Error('probability must be between 0 and 1');
    }
    return { ...r, id: r.id ?? `fault-${++this.seq}`, seen: 0, fired: 0, regex };
  }
}
