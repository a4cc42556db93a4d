import { WorkflowExecutionAlreadyStartedError, type Client, type WorkflowHandle } from '@temporalio/client';
import type { AzureRestoreResult } from '../domain/azure';
import { FailureType, RestoreError } from '../domain/errors';
import { planWorkflowId, type PlanProgress, type PlanResult, type PlanSpec, type PlanVmState } from '../domain/plan';
import type { VSphereRestoreResult } from '../domain/vsphere';
import { failureMessage, fmtBytes, getRestoreStatus } from './restore';
import { approvePlan, planProgressQuery, runRestorePlan } from '../workflows';

/** One row of `plan status`: a VM with its group, where its restore stands, and what it moved. */
export interface PlanVmStatus {
  group: number;
  groupName: string;
  vmName: string;
  target: 'vsphere' | 'azure';
  workflowId: string;
  state: PlanVmState;
  /** The restore's own phase (creating-vm, writing-disks, uploading, ...) while it runs. */
  phase?: string;
  bytesDone: number;
  bytesTotal: number;
  /** vSphere: the transport of each disk; Azure: `upload`. */
  transport?: string;
  verification?: string;
  error?: string;
}

export interface PlanStatus {
  planId: string;
  name: string;
  status: string;
  phase: string;
  group: number;
  groups: string[];
  waiting?: PlanProgress['waiting'];
  runs: number;
  vms: PlanVmStatus[];
  result?: PlanResult;
  failure?: string;
}

/** `plan-<name>` for a plan name; a workflow id as it is. */
export function planIdOf(idOrName: string): string {
  return idOrName.startsWith('plan-') ? idOrName : planWorkflowId(idOrName);
}

export async function startPlan(
  client: Client,
  plan: PlanSpec,
  opts: { taskQueue: string; maxHistoryEvents?: number },
): Promise<WorkflowHandle<typeof runRestorePlan>> {
  const workflowId = planWorkflowId(plan.name);
  const vms = plan.groups.reduce((n, g) => n + g.vms.length, 0);
  try {
    return await client.workflow.start(runRestorePlan, {
      taskQueue: opts.taskQueue,
      workflowId,
      args: [{ plan, maxHistoryEvents: opts.maxHistoryEvents }],
      staticSummary: `Restore plan ${plan.name}: ${vms} VMs in ${plan.groups.length} groups`,
      staticDetails: plan.groups
        .map(
          (g, i) =>
            `**Group ${i + 1} (${g.name}):** ${g.vms.map((v) => `${v.vmName} (${v.target})`).join(', ')}` +
            (g.gate ? `; gate: ${g.gate}` : '') +
            (g.delaySeconds ? `; delay ${g.delaySeconds} s` : ''),
        )
        .join('\n\n'),
    });
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) {
      throw new RestoreError(
        FailureType.AlreadyExists,
        `plan '${plan.name}' is already running (${workflowId}); follow it with 'vmrestore plan status ${workflowId}' or stop it with 'vmrestore plan cancel ${workflowId}'`,
      );
    }
    throw err;
  }
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

/** The plan's own progress (its query) with, per VM, the live state of its restore. */
export async function getPlanStatus(client: Client, idOrName: string): Promise<PlanStatus> {
  const planId = planIdOf(idOrName);
  const handle = client.workflow.getHandle<typeof runRestorePlan>(planId);
  const desc = await handle.describe().catch((err: unknown) => {
    if ((err as { name?: string }).name !== 'WorkflowNotFoundError') throw err;
    throw new RestoreError(
      FailureType.NotFound,
      `no plan '${idOrName}' (no workflow ${planId}); start one with 'vmrestore plan start plan.yaml'`,
    );
  });
  const status = desc.status.name === 'CANCELLED' ? 'CANCELED' : desc.status.name;
  let progress: PlanProgress;
  try {
    progress = await handle.query(planProgressQuery);
  } catch (err) {
    throw new RestoreError(
      FailureType.NotFound,
      `plan ${planId} did not answer its progress query (is a worker running?): ${failureMessage(err)}`,
    );
  }
  const out: PlanStatus = {
    planId,
    name: progress.name,
    status,
    phase: progress.phase,
    group: progress.group,
    groups: progress.groups,
    waiting: progress.waiting,
    runs: progress.runs,
    vms: [],
  };
  out.vms = await Promise.all(
    progress.vms.map(async (v): Promise<PlanVmStatus> => {
      const row: PlanVmStatus = {
        group: v.group,
        groupName: progress.groups[v.group] ?? '',
        vmName: v.vmName,
        target: v.target,
        workflowId: v.workflowId,
        state: v.state,
        bytesDone: 0,
        bytesTotal: 0,
        verification: v.verification,
        error: v.error,
      };
      if (v.state === 'pending' || v.state === 'not-started') return row;
      try {
        const s = await getRestoreStatus(client, v.workflowId);
        row.phase = s.phase;
        row.bytesDone = sum(s.disks.map((d) => d.bytesDone));
        row.bytesTotal = sum(s.disks.map((d) => d.bytesTotal));
        if (v.target === 'azure') {
          row.transport = 'upload';
          const r = s.result as AzureRestoreResult | undefined;
          if (r?.disks) row.bytesDone = sum(r.disks.map((d) => d.bytesUploaded));
        } else {
          const r = s.result as VSphereRestoreResult | undefined;
          const modes = r?.disks ? r.disks.map((d) => d.transport) : s.disks.map((d) => d.transport).filter((t) => t !== undefined);
          row.transport = [...new Set(modes)].join(',') || undefined;
        }
        const verified = (s.result as { verification?: { status?: string } } | undefined)?.verification?.status;
        if (verified) row.verification = verified;
        if (!row.error && s.failure) row.error = s.failure;
      } catch {
        // A child that is gone (retention) keeps what the plan recorded.
      }
      return row;
    }),
  );
  if (status === 'COMPLETED') out.result = await handle.result();
  else if (status !== 'RUNNING') out.failure = await handle.result().then(() => undefined, failureMessage);
  return out;
}

export async function approvePlanGate(client: Client, idOrName: string): Promise<{ group: number; name: string }> {
  const planId = planIdOf(idOrName);
  try {
    return await client.workflow.getHandle(planId).executeUpdate(approvePlan);
  } catch (err) {
    throw new RestoreError(FailureType.InvalidRequest, `cannot approve ${planId}: ${failureMessage(err)}`);
  }
}

function cell(s: string, width: number): string {
  return s.length > width ? `${s.slice(0, width - 1)}…` : s.padEnd(width);
}

/** The plain table of `plan status`: one line per VM. */
export function renderPlanTable(s: PlanStatus): string[] {
  const wait =
    s.waiting?.gate === 'approval'
      ? ` — waiting for 'vmrestore plan approve ${s.planId}'`
      : s.waiting?.gate === 'delay'
        ? ` — delay until ${s.waiting.until}`
        : '';
  const lines = [`${s.planId}: ${s.status} (${s.phase})${wait}${s.runs > 1 ? `, run ${s.runs}` : ''}`];
  const header = ['GROUP', 'VM', 'TARGET', 'STATE', 'PHASE', 'BYTES', 'TRANSPORT', 'VERIFIED', 'ERROR'];
  const widths = [5, 24, 7, 11, 19, 21, 11, 8, 0];
  const rows = s.vms.map((v) => [
    String(v.group + 1),
    v.vmName,
    v.target,
    v.state,
    v.phase ?? '-',
    v.bytesTotal > 0 || v.bytesDone > 0
      ? `${fmtBytes(v.bytesDone)}${v.bytesTotal > 0 && v.state === 'running' ? ` / ${fmtBytes(v.bytesTotal)}` : ''}`
      : '-',
    v.transport ?? '-',
    v.verification ?? '-',
    v.error ?? '',
  ]);
  for (const r of [header, ...rows])
    lines.push(
      r
        .map((c, i) => (widths[i] ? cell(c, widths[i]) : c))
        .join(' ')
        .trimEnd(),
    );
  const counts = new Map<string, number>();
  for (const v of s.vms) counts.set(v.state, (counts.get(v.state) ?? 0) + 1);
  lines.push([...counts].map(([k, n]) => `${k}: ${n}`).join(', '));
  if (s.result?.stoppedBy) lines.push(`stopped: ${s.result.stoppedBy}`);
  if (s.failure) lines.push(`${s.status}: ${s.failure}`);
  return lines;
}
