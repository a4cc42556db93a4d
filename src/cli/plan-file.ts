import { readFileSync } from 'node:fs';
import { isMap, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type { AzureRestoreRequest } from '../domain/azure';
import { FailureType, RestoreError } from '../domain/errors';
import { planVmKey, type PlanGate, type PlanGroup, type PlanLimits, type PlanSpec, type PlanVm } from '../domain/plan';
import { DISK_FORMATS, TRANSPORT_REQUESTS, type VSphereRestoreRequest } from '../domain/vsphere';
import { validateAzureRestoreRequest, validateVSphereRestoreRequest } from '../domain/validation';
import { AZURE_REQUEST_FIELDS, VSPHERE_REQUEST_FIELDS, azureRestoreRequest, vsphereRestoreRequest } from './restore-requests';

/**
 * The plan file: YAML with a name, optional limits and per-target defaults, and boot groups of VMs, each
 * VM a vSphere or Azure restore request (the request's own field names). Every problem is reported with
 * its line and the path of the key, all at once.
 */

type Path = Array<string | number>;

const TOP_KEYS = ['name', 'limits', 'defaults', 'groups'] as const;
const GROUP_KEYS = ['name', 'vms', 'gate', 'delay'] as const;
const LIMIT_KEYS: Array<keyof PlanLimits> = [
  'restoresPerPlan',
  'disksPerHost',
  'disksPerDatastore',
  'uploadsPerStorageAccount',
  'restoresPerRegion',
];
const GATES: PlanGate[] = ['verified', 'approval'];
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
const MAX_VMS = 10_000;

export class PlanFileError extends RestoreError {
  constructor(
    readonly file: string,
    readonly problems: Array<{ line: number; path: string; message: string }>,
  ) {
    super(
      FailureType.InvalidRequest,
      `plan file ${file} has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n` +
        problems.map((p) => `  ${file}:${p.line}: ${p.path ? `${p.path}: ` : ''}${p.message}`).join('\n'),
    );
    this.name = 'PlanFileError';
  }
}

/** `groups[0].vms[1].datastore` */
export function formatPath(path: Path): string {
  return path
    .map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? p : /^[A-Za-z_][\w]*$/.test(p) ? `.${p}` : `[${JSON.stringify(p)}]`))
    .join('');
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function readPlanFile(file: string): PlanSpec {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new RestoreError(FailureType.InvalidRequest, `cannot read plan file ${file}: ${(err as Error).message}`);
  }
  return parsePlan(text, file);
}

/** Parses and validates a plan; throws a PlanFileError naming each bad line and key. */
export function parsePlan(text: string, file = 'plan.yaml'): PlanSpec {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  const problems: Array<{ line: number; path: string; message: string }> = [];
  for (const e of [...doc.errors, ...doc.warnings]) {
    problems.push({ line: lineCounter.linePos(e.pos[0]).line, path: '', message: e.message.split('\n')[0] });
  }
  if (doc.errors.length > 0) throw new PlanFileError(file, problems);

  const lineOf = (path: Path): number => {
    const node = locate(doc, path);
    return node?.range ? lineCounter.linePos(node.range[0]).line : 1;
  };
  const bad = (path: Path, message: string): void => {
    const p = { line: lineOf(path), path: formatPath(path), message };
    // A bad default is found once per VM that takes it; it is one problem.
    if (!problems.some((q) => q.line === p.line && q.path === p.path && q.message === p.message)) problems.push(p);
  };
  const unknownKeys = (value: Record<string, unknown>, path: Path, known: readonly string[]): void => {
    for (const k of Object.keys(value)) if (!known.includes(k)) bad([...path, k], `unknown key (known: ${known.join(', ')})`);
  };
  const whole = (v: unknown, path: Path, min: number, max: number): number | undefined => {
    if (v === undefined) return undefined;
    if (!Number.isSafeInteger(v) || (v as number) < min || (v as number) > max) {
      bad(path, `expected a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`);
      return undefined;
    }
    return v as number;
  };

  const root: unknown = doc.toJS({ maxAliasCount: 100 });
  if (!isRecord(root)) {
    bad([], 'expected a mapping with name, groups and optionally limits and defaults');
    throw new PlanFileError(file, problems);
  }
  unknownKeys(root, [], TOP_KEYS);
  if (typeof root.name !== 'string' || !NAME.test(root.name)) {
    bad(
      root.name === undefined ? [] : ['name'],
      `${root.name === undefined ? 'name is required' : `${JSON.stringify(root.name)} is not a valid plan name`} (1-63 letters, digits, '.', '_' and '-', starting with a letter or digit)`,
    );
  }

  const limits: PlanLimits = {};
  if (root.limits !== undefined) {
    if (!isRecord(root.limits)) bad(['limits'], `expected a mapping of ${LIMIT_KEYS.join(', ')}`);
    else {
      unknownKeys(root.limits, ['limits'], LIMIT_KEYS);
      for (const k of LIMIT_KEYS) {
        const n = whole(root.limits[k], ['limits', k], 1, 1000);
        if (n !== undefined) limits[k] = n;
      }
    }
  }

  const defaults: Record<'vsphere' | 'azure', Record<string, unknown>> = { vsphere: {}, azure: {} };
  if (root.defaults !== undefined) {
    if (!isRecord(root.defaults)) bad(['defaults'], 'expected a mapping with vsphere and/or azure');
    else {
      unknownKeys(root.defaults, ['defaults'], ['vsphere', 'azure']);
      for (const t of ['vsphere', 'azure'] as const) {
        const d = root.defaults[t];
        if (d === undefined) continue;
        if (!isRecord(d)) bad(['defaults', t], 'expected a mapping of request fields');
        else {
          const known = (t === 'vsphere' ? VSPHERE_REQUEST_FIELDS : AZURE_REQUEST_FIELDS).filter((f) => f !== 'vmName');
          unknownKeys(d, ['defaults', t], known);
          defaults[t] = d;
        }
      }
    }
  }

  const groups: PlanGroup[] = [];
  const keys = new Map<string, string>();
  let vmCount = 0;
  if (!Array.isArray(root.groups) || root.groups.length === 0) {
    bad(
      root.groups === undefined ? [] : ['groups'],
      root.groups === undefined ? 'groups is required' : 'expected a list of at least one group',
    );
  } else {
    const groupNames = new Set<string>();
    root.groups.forEach((raw: unknown, g: number) => {
      const gp: Path = ['groups', g];
      if (!isRecord(raw)) return bad(gp, 'expected a mapping with name and vms, optionally gate and delay');
      unknownKeys(raw, gp, GROUP_KEYS);
      const name = typeof raw.name === 'string' && NAME.test(raw.name) ? raw.name : `group${g + 1}`;
      if (raw.name !== undefined && name !== raw.name) bad([...gp, 'name'], `${JSON.stringify(raw.name)} is not a valid group name`);
      if (groupNames.has(name)) bad([...gp, 'name'], `group name '${name}' is used twice`);
      groupNames.add(name);
      const group: PlanGroup = { name, vms: [] };
      if (raw.gate !== undefined) {
        if (!GATES.includes(raw.gate as PlanGate)) bad([...gp, 'gate'], `${JSON.stringify(raw.gate)} is not one of ${GATES.join(', ')}`);
        else group.gate = raw.gate as PlanGate;
      }
      if (raw.delay !== undefined) {
        const s = delaySeconds(raw.delay);
        if (s === undefined)
          bad([...gp, 'delay'], `expected seconds (30) or a duration (30s, 5m, 1h) up to 24h, got ${JSON.stringify(raw.delay)}`);
        else if (s > 0) group.delaySeconds = s;
      }
      if (!Array.isArray(raw.vms) || raw.vms.length === 0) {
        bad(raw.vms === undefined ? gp : [...gp, 'vms'], raw.vms === undefined ? 'vms is required' : 'expected a list of at least one VM');
      } else {
        raw.vms.forEach((rawVm: unknown, i: number) => {
          const vp: Path = [...gp, 'vms', i];
          vmCount++;
          if (!isRecord(rawVm)) return bad(vp, 'expected a mapping: target and the fields of its restore request');
          const vm = planVm(rawVm, vp);
          if (!vm) return;
          const key = planVmKey(vm);
          const first = keys.get(key);
          if (first) bad([...vp, 'vmName'], `${vm.target} VM '${vm.vmName}' is already restored by ${first}`);
          else keys.set(key, formatPath(vp));
          if (group.gate === 'verified' && vm.verify !== true) {
            bad(vp, `group '${name}' has gate: verified, so every VM of it needs verify: true`);
          }
          group.vms.push(vm);
        });
      }
      groups.push(group);
    });
    if (vmCount > MAX_VMS) bad(['groups'], `${vmCount} VMs; a plan holds at most ${MAX_VMS}`);
    const last = root.groups.length - 1;
    const lastGroup = root.groups[last] as Record<string, unknown> | undefined;
    if (isRecord(lastGroup) && lastGroup.gate === 'approval')
      bad(['groups', last, 'gate'], 'the last group has nothing after it to hold back');
  }

  /** A VM entry: its target, the defaults of its target, its own fields; checked by the request validators. */
  function planVm(raw: Record<string, unknown>, vp: Path): PlanVm | undefined {
    const target = raw.target ?? 'vsphere';
    if (target !== 'vsphere' && target !== 'azure') {
      bad([...vp, 'target'], `${JSON.stringify(target)} is not one of vsphere, azure`);
      return undefined;
    }
    const { target: _t, ...fields } = raw;
    const known = target === 'vsphere' ? VSPHERE_REQUEST_FIELDS : AZURE_REQUEST_FIELDS;
    unknownKeys(fields, vp, [...known, 'target']);
    const merged = { ...defaults[target], ...fields };
    const where = (field: Path): Path =>
      field.length && fields[field[0]] === undefined && defaults[target][field[0]] !== undefined
        ? ['defaults', target, ...field]
        : [...vp, ...field];
    try {
      if (target === 'vsphere') {
        const request = vsphereRestoreRequest(merged as unknown as VSphereRestoreRequest);
        validateVSphereRestoreRequest(request, TRANSPORT_REQUESTS, DISK_FORMATS);
        return { target, ...request };
      }
      const request = azureRestoreRequest(merged as unknown as AzureRestoreRequest);
      validateAzureRestoreRequest(request);
      return { target, ...request };
    } catch (err) {
      if (!(err instanceof RestoreError)) throw err;
      const m = /^request field ([^:]+): ([\s\S]*)$/.exec(err.message);
      if (m) bad(where(parseFieldPath(m[1])), m[2]);
      else bad(vp, err.message);
      return undefined;
    }
  }

  if (problems.length > 0) {
    problems.sort((a, b) => a.line - b.line);
    throw new PlanFileError(file, problems);
  }
  return { name: root.name as string, groups, ...(Object.keys(limits).length ? { limits } : {}) };
}

/** `networkMap["VM Network"]` or `verifyNetwork.address` as a path. */
function parseFieldPath(field: string): Path {
  const out: Path = [];
  const re = /([A-Za-z_]\w*)|\[("(?:[^"\\]|\\.)*")\]|\[(\d+)\]/g;
  for (let m = re.exec(field); m; m = re.exec(field)) {
    if (m[1]) out.push(m[1]);
    else if (m[2]) out.push(JSON.parse(m[2]) as string);
    else out.push(Number(m[3]));
  }
  return out;
}

/** 30, '30s', '5m', '1h' → seconds (at most a day); undefined when not a duration. */
function delaySeconds(v: unknown): number | undefined {
  let s: number | undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v)) s = v;
  else if (typeof v === 'string') {
    const m = /^(\d+)\s*(s|m|h)?$/.exec(v.trim());
    if (m) s = Number(m[1]) * (m[2] === 'h' ? 3600 : m[2] === 'm' ? 60 : 1);
  }
  return s !== undefined && s >= 0 && s <= 86_400 ? s : undefined;
}

/** The deepest node on `path`: a mapping key's node for a key, a list item for an index. */
function locate(doc: Document, path: Path): Node | undefined {
  let node: unknown = doc.contents;
  let found: Node | undefined = (doc.contents as Node | null) ?? undefined;
  for (const step of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && (isScalar(p.key) ? p.key.value : p.key) === step);
      if (!pair) return found;
      found = (pair.key as Node) ?? found;
      node = pair.value;
    } else if (isSeq(node) && typeof step === 'number') {
      const item = node.items[step];
      if (!item) return found;
      found = item as Node;
      node = item;
    } else {
      return found;
    }
  }
  return found;
}
