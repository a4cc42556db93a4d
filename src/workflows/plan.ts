import {
  allHandlersFinished,
  ApplicationFailure,
  CancellationScope,
  CancelledFailure,
  ChildWorkflowFailure,
  condition,
  continueAsNew,
  defineQuery,
  defineUpdate,
  executeChild,
  isCancellation,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  workflowInfo,
} from '@temporalio/workflow';
import type { PlanActivities } from '../activities/plan';
import type { AzureRestoreRequest, AzureRestoreResult } from '../domain/azure';
import {
  DEFAULT_RESTORES_PER_PLAN,
  PLAN_FINGERPRINT_MEMO,
  planChildWorkflowId,
  planVmKey,
  requestFingerprint,
  type PlanProgress,
  type PlanResult,
  type PlanSpec,
  type PlanVm,
  type PlanVmProgress,
} from '../domain/plan';
import type { VSphereRestoreRequest, VSphereRestoreResult } from '../domain/vsphere';
import { RestoreKind, RestoreVm } from '../domain/search-attributes';
import { VERIFICATION_FAILED, type RestoreVerification } from '../domain/verification';
import { controlOptions } from './activity-options';
import { restoreToAzure } from './restore-azure';
import { restoreToVSphere } from './restore-vsphere';

export const planProgressQuery = defineQuery<PlanProgress>('planProgress');
/** Opens the approval gate the plan waits at; rejected when it waits at none. */
export const approvePlan = defineUpdate<{ group: number; name: string }, []>('approve');

/** Where a run of the plan starts: carried across continue-as-new. */
export interface PlanResume {
  group: number;
  vms: PlanVmProgress[];
  approved: number[];
  runs: number;
}

export interface RunRestorePlanRequest {
  plan: PlanSpec;
  /** Continue as new once this run's history passes this many events (default 2000). */
  maxHistoryEvents?: number;
  resume?: PlanResume;
}

const DEFAULT_MAX_HISTORY_EVENTS = 2000;
/** VMs checked against earlier runs per activity call: one call stays small whatever the plan's size. */
const PRIOR_CHECK_BATCH = 100;

const planActivities = proxyActivities<PlanActivities>(controlOptions('lease'));

/**
 * A restore plan: boot groups in order, each VM a child restore (vSphere or Azure) with the plan's shared
 * limits, at most `restoresPerPlan` at once; after a group, its gate (`verified` or `approval`) and delay.
 * A run of a plan that ran before skips the VMs an earlier run restored (and verified, when asked) with the
 * same request, and restores the others again. The history stays bounded: children hold their own, and
 * the plan continues as new between restores once its history grows past `maxHistoryEvents`.
 */
export async function runRestorePlan(req: RunRestorePlanRequest): Promise<PlanResult> {
  const { plan } = req;
  const info = workflowInfo();
  const planId = info.workflowId;
  const maxEvents = req.maxHistoryEvents ?? DEFAULT_MAX_HISTORY_EVENTS;
  const limit = Math.max(1, plan.limits?.restoresPerPlan ?? DEFAULT_RESTORES_PER_PLAN);
  const approved = new Set(req.resume?.approved ?? []);
  const entries: Array<{ vm: PlanVm; group: number }> = plan.groups.flatMap((g, group) => g.vms.map((vm) => ({ vm, group })));
  const vms: PlanVmProgress[] =
    req.resume?.vms ??
    entries.map(({ vm, group }) => ({
      key: planVmKey(vm),
      group,
      target: vm.target,
      vmName: vm.vmName,
      workflowId: planChildWorkflowId(planId, vm),
      state: 'pending',
    }));
  const progress: PlanProgress = {
    planId,
    name: plan.name,
    phase: 'starting',
    group: req.resume?.group ?? 0,
    groups: plan.groups.map((g) => g.name),
    vms,
    runs: (req.resume?.runs ?? 0) + 1,
  };
  setHandler(planProgressQuery, () => progress);
  setHandler(
    approvePlan,
    () => {
      const group = progress.waiting!.group;
      approved.add(group);
      return { group, name: plan.groups[group].name };
    },
    {
      validator: () => {
        if (progress.waiting?.gate !== 'approval') {
          throw new Error(`plan '${plan.name}' is not waiting for approval (${progress.phase})`);
        }
      },
    },
  );
  const show = (phase: string): void => {
    progress.phase = phase;
    setCurrentDetails(renderPlanDetails(progress));
  };
  const groupLabel = (g: number) => `group ${g + 1} of ${plan.groups.length} (${plan.groups[g].name})`;
  const result = (stoppedBy?: string): PlanResult => ({
    planId,
    vms: vms.map(({ key, vmName, target, workflowId, state, verification, error }) => ({
      key,
      vmName,
      target,
      workflowId,
      state,
      verification,
      error,
    })),
    groupsRun: Math.min(progress.group, plan.groups.length),
    stoppedBy,
  });
  const markNotStarted = () => {
    for (const v of vms) if (v.state === 'pending') v.state = 'not-started';
  };
  const rollOver = async (group: number): Promise<never> => {
    await condition(allHandlersFinished);
    return continueAsNew<typeof runRestorePlan>({
      plan,
      maxHistoryEvents: req.maxHistoryEvents,
      resume: { group, vms, approved: [...approved], runs: progress.runs },
    });
  };
  const historyFull = () => workflowInfo().historyLength >= maxEvents || workflowInfo().continueAsNewSuggested;

  try {
    if (!req.resume) {
      // What earlier runs of this plan restored: skipped when the same request completed (and verified).
      show('checking earlier runs');
      for (let i = 0; i < entries.length; i += PRIOR_CHECK_BATCH) {
        const batch = entries.slice(i, i + PRIOR_CHECK_BATCH).map(({ vm }, j) => ({
          workflowId: vms[i + j].workflowId,
          fingerprint: requestFingerprint(vm),
          needsVerification: vm.verify === true,
        }));
        const done = await planActivities.findRestoredPlanVms({ children: batch });
        for (const d of done) {
          const v = vms.find((x) => x.workflowId === d.workflowId)!;
          v.state = 'skipped';
          v.restoredBy = d.runId;
          v.verification = d.verification;
        }
      }
    }

    for (let g = progress.group; g < plan.groups.length; g++) {
      progress.group = g;
      progress.waiting = undefined;
      const group = plan.groups[g];
      show(`running ${groupLabel(g)}`);
      let next = 0;
      // Only VMs never started in this plan run: a run continued as new does not restart what failed before.
      const todo = vms.map((v, i) => ({ v, entry: entries[i] })).filter(({ v }) => v.group === g && v.state === 'pending');
      let rolled = false;
      const lane = async (): Promise<void> => {
        while (next < todo.length) {
          if (CancellationScope.current().consideredCancelled) return;
          if (historyFull()) {
            rolled = true;
            return;
          }
          const { v, entry } = todo[next++];
          await restoreOne(v, entry.vm, plan);
          show(`running ${groupLabel(g)}`);
        }
      };
      await Promise.all(Array.from({ length: Math.min(limit, todo.length) }, lane));
      if (CancellationScope.current().consideredCancelled) throw new CancelledFailure('plan cancelled');
      if (rolled) await rollOver(g);

      const members = vms.filter((v) => v.group === g);
      if (group.gate === 'verified') {
        const unverified = members.filter((v) => v.verification !== 'passed' || (v.state !== 'completed' && v.state !== 'skipped'));
        if (unverified.length > 0) {
          const stoppedBy =
            `gate after ${groupLabel(g)}: not verified: ` +
            unverified.map((v) => `${v.vmName} (${v.state}${v.verification ? `, verification ${v.verification}` : ''})`).join(', ');
          progress.group = g + 1;
          markNotStarted();
          show(`stopped: ${stoppedBy}`);
          return result(stoppedBy);
        }
      }
      // A group that an earlier run restored entirely was approved and waited for then.
      const ranNow = members.some((v) => v.state !== 'skipped');
      if (g + 1 < plan.groups.length && ranNow) {
        if (group.gate === 'approval' && !approved.has(g)) {
          progress.waiting = { gate: 'approval', group: g };
          show(`waiting for approval after ${groupLabel(g)}`);
          await condition(() => approved.has(g));
        }
        if (group.delaySeconds) {
          progress.waiting = { gate: 'delay', group: g, until: new Date(Date.now() + group.delaySeconds * 1000).toISOString() };
          show(`waiting ${group.delaySeconds} s after ${groupLabel(g)}`);
          await sleep(group.delaySeconds * 1000);
        }
        progress.waiting = undefined;
        if (historyFull()) await rollOver(g + 1);
      }
    }
    progress.group = plan.groups.length;
    show('completed');
    return result();
  } catch (err) {
    if (isCancellation(err)) {
      markNotStarted();
      progress.waiting = undefined;
      show('cancelled');
    }
    throw err;
  }
}

/** One VM of the plan as a child restore; its outcome goes to its row, never out as an exception. */
async function restoreOne(v: PlanVmProgress, vm: PlanVm, plan: PlanSpec): Promise<void> {
  v.state = 'running';
  v.error = undefined;
  v.verification = undefined;
  const child = {
    workflowId: v.workflowId,
    staticSummary: `restore ${vm.vmName} to ${vm.target} (plan ${plan.name}, group ${v.group + 1})`,
    memo: { [PLAN_FINGERPRINT_MEMO]: requestFingerprint(vm) },
    typedSearchAttributes: [
      { key: RestoreKind, value: vm.target },
      { key: RestoreVm, value: vm.vmName },
    ],
  };
  const limits = plan.limits ?? {};
  try {
    let verification: RestoreVerification;
    if (vm.target === 'azure') {
      const { target: _azure, ...fields } = vm;
      const request: AzureRestoreRequest = {
        ...fields,
        limits: { uploadsPerStorageAccount: limits.uploadsPerStorageAccount, restoresPerRegion: limits.restoresPerRegion },
      };
      const r: AzureRestoreResult = await executeChild(restoreToAzure, { ...child, args: [request] });
      verification = r.verification;
    } else {
      const { target: _vsphere, ...fields } = vm;
      const request: VSphereRestoreRequest = {
        ...fields,
        limits: { disksPerHost: limits.disksPerHost, disksPerDatastore: limits.disksPerDatastore },
      };
      const r: VSphereRestoreResult = await executeChild(restoreToVSphere, { ...child, args: [request] });
      verification = r.verification;
    }
    v.state = 'completed';
    v.verification = verification.status;
  } catch (err) {
    v.state = isCancellation(err) ? 'cancelled' : 'failed';
    v.error = innermostMessage(err);
    const cause = err instanceof ChildWorkflowFailure ? err.cause : undefined;
    if (cause instanceof ApplicationFailure && cause.type === VERIFICATION_FAILED) v.verification = 'failed';
  }
}

function innermostMessage(err: unknown): string {
  let e: unknown = err;
  while (e && typeof e === 'object' && 'cause' in e && (e as { cause?: unknown }).cause) e = (e as { cause: unknown }).cause;
  return e instanceof Error ? e.message : String(e);
}

/** The Web UI's current details: counts by state and the VMs not done yet (at most 30 rows). */
function renderPlanDetails(p: PlanProgress): string {
  const counts = new Map<string, number>();
  for (const v of p.vms) counts.set(v.state, (counts.get(v.state) ?? 0) + 1);
  const summary = [...counts].map(([s, n]) => `${s}: ${n}`).join(', ');
  const rows = p.vms
    .filter((v) => v.state !== 'completed' && v.state !== 'skipped')
    .slice(0, 30)
    .map((v) => `| ${v.group + 1} | ${v.vmName} | ${v.target} | ${v.state} | ${v.verification ?? '-'} | ${(v.error ?? '').slice(0, 80)} |`);
  const table = rows.length
    ? ['| group | VM | target | state | verification | error |', '|---|---|---|---|---|---|', ...rows].join('\n')
    : '';
  return `**${p.phase}** (run ${p.runs})\n\n${summary}\n\n${table}`;
}
