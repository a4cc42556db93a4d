import { methodNotAllowed, normLocation, unknownRoute, type Reply, type ReqCtx } from './common';
import { ArmError, resourceGroupNotFound } from './errors';
import { BlobInspector } from './blobs';
import type {
  DiskAccessEndpoint,
  ItemTarget,
  OperationInit,
  RunCommandOutput,
  RunCommandRequest,
  RunCommandResponseRule,
  SimContext,
  SimSettings,
} from './context';
import type { DiskStore } from './diskstore';
import { renderVmSize } from './providers/vm-render';
import { COMPLETERS, PROVIDERS } from './routes';
import { findVmSize, VM_SIZES } from './sizes';
import {
  key,
  type ProvisioningState,
  type OperationRec,
  type ResourceGroupRec,
  type RunCommandRec,
  type SimState,
  StateStore,
} from './state';
import { nowIso, objectAt, optString, optTags, resourceId, uuid, type Json } from './util';

const COMPUTE = 'Microsoft.Compute';
const NETWORK = 'Microsoft.Network';

export class ArmSim implements SimContext {
  readonly blobs = new BlobInspector();
  runCommandRules: Array<RunCommandResponseRule & { used: number }> = [];
  /** Where read SAS URLs point; set once the disk access listener is up. */
  diskAccess?: DiskAccessEndpoint;
  private lock: Promise<unknown> = Promise.resolve();

  constructor(
    readonly store: StateStore,
    readonly settings: SimSettings,
    /** Each managed disk's bytes, and the device paths of running VMs. */
    readonly disks: DiskStore,
  ) {}

  get state(): SimState {
    return this.store.state;
  }

  get subscriptionId(): string {
    return this.state.subscriptionId;
  }

  /** Requests are handled one at a time so validation that awaits blob reads cannot interleave with other writes. */
  handle(ctx: ReqCtx): Promise<Reply> {
    return this.exclusive(() => this.dispatch(ctx));
  }

  /** Runs `fn` in turn with the requests, none of which runs meanwhile. */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.lock.then(fn);
    this.lock = run.catch(() => undefined);
    return run;
  }

  private async dispatch(ctx: ReqCtx): Promise<Reply> {
    this.settleDue();
    const s = ctx.segments;
    const l = s.map((x) => x.toLowerCase());
    if (l[0] !== 'subscriptions' || s.length < 2) {
      throw new ArmError(404, 'NotFound', `No route for ${ctx.method} ${ctx.path}.`);
    }
    if (key(s[1]) !== key(this.subscriptionId)) {
      throw new ArmError(404, 'SubscriptionNotFound', `The subscription '${s[1]}' could not be found.`);
    }
    if (s.length === 2) {
      if (ctx.method !== 'GET') throw methodNotAllowed(ctx);
      return {
        status: 200,
        body: {
          id: `/subscriptions/${this.subscriptionId}`,
          subscriptionId: this.subscriptionId,
          displayName: 'vmrestore lab subscription',
          state: 'Enabled',
          subscriptionPolicies: { locationPlacementId: 'Public_2014-09-01', quotaId: 'PayAsYouGo_2014-09-01', spendingLimit: 'Off' },
        },
      };
    }
    if (l[2] === 'providers' && s.length >= 5) return this.subscriptionProviderRoute(ctx, s, l);
    if (l[2] === 'resourcegroups' && s.length >= 3) {
      if (s.length === 3) {
        if (ctx.method !== 'GET') throw methodNotAllowed(ctx);
        return { status: 200, body: { value: Object.values(this.state.resourceGroups).map(renderResourceGroup) } };
      }
      const rg = s[3];
      if (s.length === 4) return this.resourceGroupRoute(ctx, rg);
      this.requireResourceGroup(rg);
      if (l[4] !== 'providers' || s.length < 7) throw unknownRoute(ctx);
      const provider = PROVIDERS.get(`${l[5]}/${l[6]}`);
      if (!provider) throw unknownRoute(ctx);
      if (s.length === 7) {
        if (ctx.method !== 'GET') throw methodNotAllowed(ctx);
        return { status: 200, body: { value: provider.list(this, this.requireResourceGroup(rg).name) } };
      }
      return provider.route(this, ctx, rg, s[7], l.slice(8), s.slice(8));
    }
    throw unknownRoute(ctx);
  }

  private subscriptionProviderRoute(ctx: ReqCtx, s: string[], l: string[]): Reply {
    const ns = l[3];
    const provider = ns === 'microsoft.compute' ? COMPUTE : ns === 'microsoft.network' ? NETWORK : undefined;
    if (provider && l[4] === 'locations' && s.length === 8 && (l[6] === 'operations' || l[6] === 'operationresults')) {
      if (ctx.method !== 'GET') throw methodNotAllowed(ctx);
      const monitor = l[6] === 'operationresults' || ctx.query.get('monitor')?.toLowerCase() === 'true';
      return this.pollOperation(ctx, s[7], monitor);
    }
    if (provider === COMPUTE && l[4] === 'locations' && s.length === 7) {
      if (ctx.method !== 'GET') throw methodNotAllowed(ctx);
      if (l[6] === 'vmsizes') return { status: 200, body: { value: VM_SIZES.map(renderVmSize) } };
      if (l[6] === 'usages') return { status: 200, body: { value: this.usages(s[5]) } };
    }
    if (s.length === 5) {
      if (ctx.method !== 'GET') throw methodNotAllowed(ctx);
      const type = `${l[3]}/${l[4]}`;
      const provider = PROVIDERS.get(type);
      if (provider) return { status: 200, body: { value: provider.list(this, undefined) } };
    }
    throw unknownRoute(ctx);
  }

  private resourceGroupRoute(ctx: ReqCtx, name: string): Reply {
    const existing = this.state.resourceGroups[key(name)];
    if (ctx.method === 'GET' || ctx.method === 'HEAD') {
      if (!existing) throw resourceGroupNotFound(name);
      return { status: ctx.method === 'HEAD' ? 204 : 200, body: ctx.method === 'HEAD' ? undefined : renderResourceGroup(existing) };
    }
    if (ctx.method === 'PUT') {
      const body = objectAt(ctx.body, 'body');
      const location = optString(body.location, 'location');
      if (!location) throw new ArmError(400, 'LocationRequired', 'The location property is required for this definition.');
      if (existing && existing.location.toLowerCase() !== location.toLowerCase()) {
        throw new ArmError(
          409,
          'InvalidResourceGroupLocation',
          `Invalid resource group location '${location}'. The Resource group already exists in location '${existing.location}'.`,
        );
      }
      const rec: ResourceGroupRec = existing ?? {
        id: `/subscriptions/${this.subscriptionId}/resourceGroups/${name}`,
        name,
        location: normLocation(location),
      };
      const tags = optTags(body.tags);
      if (tags) rec.tags = tags;
      this.state.resourceGroups[key(name)] = rec;
      this.save();
      return { status: existing ? 200 : 201, body: renderResourceGroup(rec) };
    }
    throw methodNotAllowed(ctx);
  }

  requireResourceGroup(name: string): ResourceGroupRec {
    const rg = this.state.resourceGroups[key(name)];
    if (!rg) throw resourceGroupNotFound(name);
    return rg;
  }

  save(): void {
    this.store.save();
  }

  itemTarget(ctx: ReqCtx, rg: string, name: string, provider: string, type: string): ItemTarget {
    const rgName = this.requireResourceGroup(rg).name;
    const id = resourceId(this.subscriptionId, rgName, provider, type, name);
    const k = key(id);
    // One operation per resource at a time: a write first lets the running one finish (reads observe it running).
    if (ctx.method !== 'GET') this.settleResource(k);
    return { rgName, id, k };
  }

  /** Marks a resource Deleting and starts its delete operation: 202 with the polling headers. */
  acceptDelete(
    ctx: ReqCtx,
    resource: { location: string; provisioningState: ProvisioningState },
    init: Omit<OperationInit, 'action' | 'location'>,
  ): Reply {
    resource.provisioningState = 'Deleting';
    const op = this.startOperation(ctx, { ...init, location: resource.location, action: 'DELETE' });
    this.save();
    return { status: 202, headers: this.operationHeaders(ctx, op) };
  }

  // ---- long-running operations -------------------------------------------------------------------

  startOperation(ctx: ReqCtx, init: OperationInit): OperationRec {
    const op: OperationRec = {
      id: uuid(),
      status: 'InProgress',
      pollsRemaining: this.settings.lroPolls,
      deadline: Date.now() + this.settings.lroMaxMs,
      startTime: nowIso(),
      failWith: ctx.lroFailure,
      ...init,
      location: normLocation(init.location),
    };
    this.state.operations[op.id] = op;
    if (op.pollsRemaining <= 0) this.completeOperation(op);
    this.pruneOperations();
    return op;
  }

  /** Headers of a 201/202 that starts an operation: both polling styles, as CRP sends them. */
  operationHeaders(ctx: ReqCtx, op: OperationRec, withLocation = true): Record<string, string> {
    const h: Record<string, string> = {
      'Azure-AsyncOperation': this.operationUrl(ctx, op, false),
      'Retry-After': String(this.settings.retryAfterSeconds),
    };
    if (withLocation) h.Location = this.operationUrl(ctx, op, true);
    return h;
  }

  private operationUrl(ctx: ReqCtx, op: OperationRec, monitor: boolean): string {
    const base = `${ctx.baseUrl}/subscriptions/${this.subscriptionId}/providers/${op.provider}/locations/${op.location}`;
    if (op.provider === NETWORK) {
      return `${base}/${monitor ? 'operationResults' : 'operations'}/${op.id}?api-version=${ctx.apiVersion}`;
    }
    return `${base}/operations/${op.id}?${monitor ? 'monitor=true&' : ''}api-version=${ctx.apiVersion}`;
  }

  private pollOperation(ctx: ReqCtx, id: string, monitor: boolean): Reply {
    const op = this.state.operations[id] ?? Object.values(this.state.operations).find((o) => key(o.id) === key(id));
    if (!op) throw new ArmError(404, 'NotFound', `The operation '${id}' was not found.`);
    if (op.status === 'InProgress') {
      op.pollsRemaining--;
      if (op.pollsRemaining <= 0) this.completeOperation(op);
      else this.save();
    }
    const retry = { 'Retry-After': String(this.settings.retryAfterSeconds) };
    if (monitor) {
      // The Location (monitor) URL answers 202 while running and the operation's outcome afterwards.
      if (op.status === 'InProgress') return { status: 202, headers: { ...retry, Location: this.operationUrl(ctx, op, true) } };
      if (op.status === 'Failed') {
        const err = op.error ?? { code: 'InternalExecutionError', message: 'The operation failed.' };
        throw new ArmError(op.failWith?.status ?? 500, err.code, err.message);
      }
      return { status: 200, body: op.result ?? undefined };
    }
    const body: Json = { name: op.id, status: op.status, startTime: op.startTime };
    if (op.endTime) body.endTime = op.endTime;
    if (op.status === 'Failed' && op.error) body.error = op.error;
    if (op.status === 'Succeeded' && op.kind === 'vmRunCommand' && op.result !== undefined) body.properties = { output: op.result };
    return { status: 200, body, headers: op.status === 'InProgress' ? retry : undefined };
  }

  /** Completes operations whose deadline passed; runs at the start of every request. */
  settleDue(): void {
    const now = Date.now();
    for (const op of Object.values(this.state.operations)) {
      if (op.status === 'InProgress' && op.deadline <= now) this.completeOperation(op);
    }
  }

  /**
   * Completes any running operation on a resource before a new request touches it, the way the simulator
   * serialises work per resource (the later request observes the earlier one's outcome).
   */
  settleResource(resourceKey: string): void {
    for (const op of Object.values(this.state.operations)) {
      if (op.status === 'InProgress' && op.resourceKey === resourceKey) this.completeOperation(op);
    }
  }

  completeOperation(op: OperationRec): void {
    if (op.status !== 'InProgress') return;
    const failed = op.failWith !== undefined;
    op.status = failed ? 'Failed' : 'Succeeded';
    op.endTime = nowIso();
    if (failed && op.failWith) op.error = { code: op.failWith.code, message: op.failWith.message };
    COMPLETERS.get(op.kind)?.complete?.(this, op, failed);
    this.save();
  }

  private pruneOperations(): void {
    const done = Object.values(this.state.operations)
      .filter((o) => o.status !== 'InProgress')
      .sort((a, b) => (a.startTime < b.startTime ? -1 : 1));
    for (const o of done.slice(0, Math.max(0, done.length - 500))) delete this.state.operations[o.id];
  }

  // ---- quotas --------------------------------------------------------------------------------------

  /** vCPUs in use per family and in total for a location; deallocated VMs count too, as in Azure. */
  coreUsage(location: string, exceptVmKey?: string): { total: number; families: Record<string, number> } {
    const loc = normLocation(location);
    const families: Record<string, number> = {};
    let total = 0;
    for (const [k, vm] of Object.entries(this.state.vms)) {
      if (k === exceptVmKey || normLocation(vm.location) !== loc) continue;
      const size = findVmSize(vm.vmSize);
      if (!size) continue;
      total += size.vCPUs;
      families[size.family] = (families[size.family] ?? 0) + size.vCPUs;
    }
    return { total, families };
  }

  familyLimit(family: string): number {
    return this.settings.quotas.families[family] ?? this.settings.quotas.defaultFamilyVCpus;
  }

  private usages(location: string): Json[] {
    const u = this.coreUsage(location);
    const rows: Json[] = [
      {
        unit: 'Count',
        currentValue: u.total,
        limit: this.settings.quotas.regionalVCpus,
        name: { value: 'cores', localizedValue: 'Total Regional vCPUs' },
      },
      {
        unit: 'Count',
        currentValue: Object.keys(this.state.vms).length,
        limit: 25000,
        name: { value: 'virtualMachines', localizedValue: 'Virtual Machines' },
      },
    ];
    const seen = new Set<string>();
    for (const size of VM_SIZES) {
      if (seen.has(size.family)) continue;
      seen.add(size.family);
      rows.push({
        unit: 'Count',
        currentValue: u.families[size.family] ?? 0,
        limit: this.familyLimit(size.family),
        name: { value: size.family, localizedValue: size.familyDisplay },
      });
    }
    return rows;
  }

  /** CRP's quota error text, so tests and callers see what Azure sends. */
  quotaError(
    family: string | undefined,
    familyDisplay: string,
    location: string,
    limit: number,
    usage: number,
    required: number,
  ): ArmError {
    const what = family ? `${family} Cores` : 'Total Regional Cores';
    return new ArmError(
      409,
      'OperationNotAllowed',
      `Operation could not be completed as it results in exceeding approved ${what} quota. Additional details - ` +
        `Deployment Model: Resource Manager, Location: ${normLocation(location)}, Current Limit: ${limit}, ` +
        `Current Usage: ${usage}, Additional Required: ${required}, (Minimum) New Limit Required: ${usage + required}. ` +
        `Submit a request for Quota increase at https://aka.ms/ProdportalCRP/#blade/Microsoft_Azure_Capacity/UsageAndQuota.ReactView/Parameters/%7B%22subscriptionId%22:%22${this.subscriptionId}%22,%22command%22:%22openQuotaApprovalBlade%22,%22quotas%22:[%7B%22location%22:%22${normLocation(location)}%22,%22providerId%22:%22Microsoft.Compute%22,%22resourceName%22:%22${family ?? 'cores'}%22,%22quotaRequest%22:%7B%22properties%22:%7B%22limit%22:${usage + required},%22unit%22:%22Count%22,%22name%22:%7B%22value%22:%22${family ?? 'cores'}%22%7D%7D%7D%7D]%7D ` +
        `by specifying parameters listed in the 'Details' section for deployment to succeed. Please read more about quota limits at https://docs.microsoft.com/en-us/azure/azure-supportability/per-vm-quota-requests`,
      { details: [{ code: 'QuotaExceeded', message: `${familyDisplay} quota exceeded` }] },
    );
  }

  // ---- run command outputs -------------------------------------------------------------------------

  async runCommandOutput(req: RunCommandRequest): Promise<Required<RunCommandOutput>> {
    const text = req.script.join('\n');
    for (const r of this.runCommandRules) {
      if (r.vmName && r.vmName.toLowerCase() !== req.vmName.toLowerCase()) continue;
      if (r.match && !new RegExp(r.match).test(text)) continue;
      if (r.count !== undefined && r.used >= r.count) continue;
      r.used++;
      return { stdout: r.stdout ?? '', stderr: r.stderr ?? '', exitCode: r.exitCode ?? 0 };
    }
    const out = (await this.settings.runCommand?.(req)) ?? {};
    return { stdout: out.stdout ?? '', stderr: out.stderr ?? '', exitCode: out.exitCode ?? 0 };
  }

  recordRunCommand(rec: RunCommandRec): void {
    this.state.runCommands.push(rec);
    if (this.state.runCommands.length > 1000) this.state.runCommands.splice(0, this.state.runCommands.length - 1000);
  }
}

function renderResourceGroup(rg: ResourceGroupRec): Json {
  return {
    id: rg.id,
    name: rg.name,
    type: 'Microsoft.Resources/resourceGroups',
    location: rg.location,
    tags: rg.tags,
    properties: { provisioningState: 'Succeeded' },
  };
}
