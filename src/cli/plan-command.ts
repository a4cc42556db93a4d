import { parseArgs } from 'node:util';
import { insecureWarnings, loadAppConfig } from '../config';
import { FailureType, RestoreError } from '../domain/errors';
import { readPlanFile } from './plan-file';
import { approvePlanGate, getPlanStatus, planIdOf, renderPlanTable, startPlan, type PlanStatus } from '../client/plan';
import { createProgressView, type ProgressItem } from './progress-view';
import { connectClient } from '../client/restore';

export const PLAN_USAGE = `  vmrestore plan start plan.yaml [--wait] [--json]   (restore the plan's VMs group by group, live bars on a terminal with --wait; see README "Restore plans")
  vmrestore plan status PLAN [--watch] [--json]   (PLAN: the plan's name or workflow id plan-<name>; --watch follows it to the end, live bars on a terminal)
  vmrestore plan approve PLAN            (open the approval gate the plan waits at)
  vmrestore plan cancel PLAN             (undo the running restores; later groups do not start)`;

function usage(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, `${message}\n\n${PLAN_USAGE}`);
}

/** A plan ended well when every VM was restored now or by an earlier run and no gate stopped it. */
function succeeded(s: PlanStatus): boolean {
  return s.status === 'COMPLETED' && !s.result?.stoppedBy && s.vms.every((v) => v.state === 'completed' || v.state === 'skipped');
}

function statusJson(s: PlanStatus): string {
  return JSON.stringify({
    planId: s.planId,
    status: s.status,
    phase: s.phase,
    group: s.group,
    groups: s.groups,
    waiting: s.waiting,
    runs: s.runs,
    vms: s.vms,
    stoppedBy: s.result?.stoppedBy,
    error: s.failure,
  });
}

export async function planCommand(sub: string | undefined, args: string[], out: (line: string) => void): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { wait: { type: 'boolean' }, watch: { type: 'boolean' }, json: { type: 'boolean' } },
  });
  if (sub !== 'start' && sub !== 'status' && sub !== 'approve' && sub !== 'cancel') {
    usage(`unknown plan command '${sub ?? ''}' (known: start, status, approve, cancel)`);
  }
  const arg = positionals[0];
  if (!arg) usage(sub === 'start' ? 'plan start needs a plan file' : `plan ${sub} needs a plan name or id`);
  if (positionals.length > 1) usage(`unexpected argument '${positionals[1]}'`);
  if (values.wait && sub !== 'start') usage('--wait goes with plan start');
  if (values.watch && sub !== 'status') usage('--watch goes with plan status');
  // The file is checked before anything connects: a bad plan never starts.
  const plan = sub === 'start' ? readPlanFile(arg) : undefined;
  const config = loadAppConfig();
  for (const w of insecureWarnings(config)) process.stderr.write(w + '\n');
  const { client, connection } = await connectClient(config);
  try {
    switch (sub) {
      case 'start': {
        const handle = await startPlan(client, plan!, { taskQueue: config.temporal.taskQueue });
        const planId = handle.workflowId;
        if (!values.wait) {
          out(values.json ? JSON.stringify({ planId }) : `started ${planId}`);
          return 0;
        }
        if (!values.json) out(`started ${planId}`);
        const final = await followPlan(client, planId, values.json ? undefined : out);
        if (values.json) out(statusJson(final));
        else for (const line of renderPlanTable(final)) out(line);
        return succeeded(final) ? 0 : 1;
      }
      case 'status': {
        const s = values.watch ? await followPlan(client, planIdOf(arg), values.json ? undefined : out) : await getPlanStatus(client, arg);
        if (values.json) out(statusJson(s));
        else for (const line of renderPlanTable(s)) out(line);
        return 0;
      }
      case 'approve': {
        const { group, name } = await approvePlanGate(client, arg);
        out(`approved ${planIdOf(arg)} after group ${group + 1} (${name}); the next group starts`);
        return 0;
      }
      case 'cancel': {
        await client.workflow.getHandle(planIdOf(arg)).cancel();
        out(`cancellation requested for ${planIdOf(arg)}: running restores are undone, later groups do not start`);
        return 0;
      }
    }
  } finally {
    await connection.close();
  }
}

/** A plan's VMs as progress rows: one bar per VM with its bytes, its state and its restore's phase. */
export function planItems(s: PlanStatus): ProgressItem[] {
  return s.vms.map((v) => ({
    key: v.workflowId,
    label: `g${v.group + 1} ${v.vmName}`,
    bytesDone: v.bytesDone,
    bytesTotal: v.bytesTotal,
    state: v.state === 'completed' || v.state === 'skipped' ? 'done' : v.state === 'running' ? (v.phase ?? 'running') : v.state,
    detail: [v.target, v.transport, v.verification && `verification ${v.verification}`, v.error].filter(Boolean).join(' '),
  }));
}

/**
 * Polls the plan until it closes. On a terminal it draws one live bar per VM; otherwise it prints one
 * line per change of a VM's state or the plan's phase. Without `print` it only waits.
 */
async function followPlan(
  client: Parameters<typeof getPlanStatus>[0],
  planId: string,
  print?: (line: string) => void,
): Promise<PlanStatus> {
  const view = print && process.stdout.isTTY ? createProgressView({ mode: 'bars' }) : undefined;
  const seen = new Map<string, string>();
  let phase = '';
  try {
    for (;;) {
      const s = await getPlanStatus(client, planId);
      if (view) view.update(`plan ${s.name}: ${s.phase}`, planItems(s));
      else if (print) {
        if (s.phase !== phase) print(`plan: ${(phase = s.phase)}`);
        for (const v of s.vms) {
          const line = `${v.state}${v.verification ? ` (verification ${v.verification})` : ''}${v.error ? `: ${v.error}` : ''}`;
          if (seen.get(v.workflowId) === line) continue;
          seen.set(v.workflowId, line);
          if (v.state !== 'pending') print(`  group ${v.group + 1} ${v.vmName} [${v.target}] ${line}`);
        }
      }
      if (s.status !== 'RUNNING') return s;
      await new Promise((r) => setTimeout(r, view ? 1000 : 2000));
    }
  } finally {
    view?.stop();
  }
}
