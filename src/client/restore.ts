import { randomBytes } from 'node:crypto';
import { Client, Connection, WorkflowFailedError, type WorkflowHandle } from '@temporalio/client';
import { ApplicationFailure, type DataConverter } from '@temporalio/common';
import { decodeFromPayloadsAtIndex } from '@temporalio/common/lib/internal-non-workflow';
import { AesGcmCodec } from './codec';
import { tracingClientInterceptors } from '../telemetry/tracing';
import { etaSeconds } from '../domain/progress';
import { createProgressView, type ProgressItem, type ProgressView } from '../cli/progress-view';
import { FailureType, RestoreError } from '../domain/errors';
import type { AppConfig } from '../config';
import type { DiskCheckpoint, VSphereRestoreRequest, VSphereRestoreResult } from '../domain/vsphere';
import type { DiskProgress, RestoreProgress } from '../domain/progress';
import { RestoreKind, RestoreVm } from '../domain/search-attributes';
import { progressQuery, restoreToAzure, restoreToVSphere } from '../workflows';
import type { AzureRestoreRequest } from '../domain/azure';

export interface RestoreStatus {
  workflowId: string;
  status: string;
  phase: string;
  disks: DiskProgress[];
  result?: unknown;
  failure?: string;
  /** The details of the workflow's own failure (a failed boot verification carries its report there). */
  failureDetails?: unknown;
}

/**
 * The data converter every client and worker of this deployment shares. With payload encryption on, it
 * seals payloads and also failure messages and stack traces (the failure converter's common attributes).
 */
export function dataConverterFor(config: Pick<AppConfig, 'temporal'>): DataConverter | undefined {
  const enc = config.temporal.encryption;
  if (!enc) return undefined;
  return { payloadCodecs: [AesGcmCodec.fromConfig(enc)], failureConverterPath: require.resolve('./failure-converter') };
}

export async function connectClient(config: AppConfig): Promise<{ client: Client; connection: Connection }> {
  const connection = await Connection.connect({ address: config.temporal.address });
  // With an OTLP endpoint configured, a restore's trace starts where the client starts its workflow.
  const interceptors = { workflow: tracingClientInterceptors(config) };
  return {
    client: new Client({ connection, namespace: config.temporal.namespace, dataConverter: dataConverterFor(config), interceptors }),
    connection,
  };
}

export function newRestoreSuffix(): string {
  return randomBytes(4).toString('hex');
}

/** Workflow ids say what they are: restore-vsphere-<vm>-<id>. */
export function vsphereWorkflowId(vmName: string, suffix = newRestoreSuffix()): string {
  return `restore-vsphere-${vmName.replace(/[^A-Za-z0-9._-]/g, '_')}-${suffix}`;
}

export async function startVSphereRestore(
  client: Client,
  request: VSphereRestoreRequest,
  opts: { taskQueue: string; workflowId?: string },
): Promise<WorkflowHandle<typeof restoreToVSphere>> {
  const workflowId = opts.workflowId ?? vsphereWorkflowId(request.vmName);
  return client.workflow.start(restoreToVSphere, {
    taskQueue: opts.taskQueue,
    workflowId,
    args: [{ ...request, restoreId: request.restoreId ?? workflowId }],
    typedSearchAttributes: [
      { key: RestoreKind, value: 'vsphere' },
      { key: RestoreVm, value: request.vmName },
    ],
    staticSummary: `Restore ${request.vmName} to vSphere from ${request.restorePointId}`,
    staticDetails: [
      `**Restore point:** ${request.restorePointId}`,
      `**Target VM name:** ${request.vmName}`,
      `**Datastore:** ${request.datastore ?? '(profile default)'}`,
      `**Transport:** ${request.transport ?? 'auto'}`,
      `**Disk format:** ${request.diskFormat ?? 'same'}`,
    ].join('\n\n'),
  });
}

export function azureWorkflowId(vmName: string, suffix = newRestoreSuffix()): string {
  return `restore-azure-${vmName.replace(/[^A-Za-z0-9._-]/g, '_')}-${suffix}`;
}

export async function startAzureRestore(
  client: Client,
  request: AzureRestoreRequest,
  opts: { taskQueue: string; workflowId?: string },
): Promise<WorkflowHandle<typeof restoreToAzure>> {
  const workflowId = opts.workflowId ?? azureWorkflowId(request.vmName);
  return client.workflow.start(restoreToAzure, {
    taskQueue: opts.taskQueue,
    workflowId,
    args: [{ ...request, restoreId: request.restoreId ?? workflowId }],
    typedSearchAttributes: [
      { key: RestoreKind, value: 'azure' },
      { key: RestoreVm, value: request.vmName },
    ],
    staticSummary: `Restore ${request.vmName} to Azure from ${request.restorePointId}`,
    staticDetails: [
      `**Restore point:** ${request.restorePointId}`,
      `**Target VM name:** ${request.vmName}`,
      `**Resource group:** ${request.resourceGroup ?? '(default)'}`,
      `**Location:** ${request.location ?? '(default)'}`,
      `**Generation:** ${request.generation ?? 1}`,
      `**Proxy:** ${request.proxy ?? 'none'}`,
    ].join('\n\n'),
  });
}

/** Current state of a restore: phase from the workflow, live bytes from the disk writers' heartbeats. */
export async function getRestoreStatus(client: Client, workflowId: string): Promise<RestoreStatus> {
  const handle = client.workflow.getHandle(workflowId);
  const desc = await handle.describe();
  const status = desc.status.name;
  let progress: RestoreProgress | undefined;
  try {
    progress = await handle.query(progressQuery);
  } catch {
    // No worker to answer (or the workflow predates the query); fall back to what history says.
  }
  const disks = progress?.disks.map((d) => ({ ...d })) ?? [];
  for (const pa of desc.raw.pendingActivities ?? []) {
    const payloads = pa.heartbeatDetails?.payloads;
    if (!payloads?.length) continue;
    // Raw from the server: through the client's codec (they are sealed when encryption is on).
    const cp = await decodeFromPayloadsAtIndex<DiskCheckpoint>(client.options.loadedDataConverter, 0, payloads).catch((err: unknown) => {
      throw new RestoreError(
        FailureType.Configuration,
        `cannot read the heartbeat of activity '${pa.activityType?.name ?? '?'}' of ${workflowId}: ${(err as Error).message} ` +
          `(payload encryption must be configured with the worker's keys)`,
      );
    });
    if (!cp || typeof cp !== 'object') continue;
    const row = disks.find((d) => d.diskIndex === cp.diskIndex);
    if (row && row.state !== 'done') {
      row.bytesDone = cp.transport === 'nbd' ? cp.bytes : Math.max(cp.offset, row.bytesDone);
      if (cp.transport) row.transport = cp.transport;
      if (typeof cp.bytesPerSecond === 'number') {
        row.bytesPerSecond = cp.bytesPerSecond;
        row.etaSeconds = etaSeconds(row.bytesDone, row.bytesTotal, cp.bytesPerSecond);
      }
    }
  }
  const out: RestoreStatus = { workflowId, status, phase: progress?.phase ?? phaseFromStatus(status), disks };
  if (status === 'COMPLETED') {
    out.result = await handle.result();
    const r = out.result as VSphereRestoreResult;
    out.phase = 'completed';
    for (const d of out.disks) d.bytesDone = d.bytesTotal;
    if (out.disks.length === 0 && r?.disks) {
      out.disks = r.disks.map((d) => ({
        diskIndex: d.diskIndex,
        label: `disk ${d.diskIndex}`,
        transport: d.transport,
        bytesDone: d.bytesWritten + d.bytesSkippedZero,
        bytesTotal: d.bytesWritten + d.bytesSkippedZero,
        state: 'done',
      }));
    }
  } else if (status === 'FAILED' || status === 'TERMINATED' || status === 'CANCELLED' || status === 'TIMED_OUT') {
    try {
      await handle.result();
    } catch (err) {
      out.failure = failureMessage(err);
      const cause = err instanceof WorkflowFailedError ? err.cause : undefined;
      if (cause instanceof ApplicationFailure && cause.details?.length) out.failureDetails = cause.details[0];
    }
  }
  return out;
}

function phaseFromStatus(status: string): string {
  return status === 'COMPLETED' ? 'completed' : status === 'RUNNING' ? 'unknown' : status.toLowerCase();
}

/** The innermost cause's message: what actually went wrong, not the wrapper's. */
export function failureMessage(err: unknown): string {
  let e: unknown = err;
  if (e instanceof WorkflowFailedError) e = e.cause ?? e;
  while (e && typeof e === 'object' && 'cause' in e && (e as { cause?: unknown }).cause) e = (e as { cause: unknown }).cause;
  return e instanceof Error ? e.message : String(e);
}

export { fmtSize as fmtBytes } from '../cli/progress-view';

/** A restore's disks as rows of a progress view. */
export function diskItems(disks: DiskProgress[]): ProgressItem[] {
  return disks.map((d) => ({
    key: String(d.diskIndex),
    label: `disk${d.diskIndex}`,
    bytesDone: d.bytesDone,
    bytesTotal: d.bytesTotal,
    state: d.state,
    detail: d.transport,
    bytesPerSecond: d.bytesPerSecond,
    etaSeconds: d.etaSeconds,
  }));
}

/**
 * Polls the restore until it ends, showing phase and per-disk bytes, throughput and ETA: on `view`, or as
 * plain lines through `print`.
 */
export async function waitWithProgress(
  client: Client,
  workflowId: string,
  report?: ((line: string) => void) | ProgressView,
): Promise<RestoreStatus> {
  const view = typeof report === 'function' ? createProgressView({ mode: 'lines', print: report }) : report;
  try {
    for (;;) {
      const s = await getRestoreStatus(client, workflowId);
      view?.update(s.phase, diskItems(s.disks));
      if (s.status !== 'RUNNING') {
        const status = s.status === 'CANCELLED' ? 'CANCELED' : s.status;
        view?.stop();
        if (view && s.failure) view.log(`${status}: ${s.failure}`);
        return { ...s, status };
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    view?.stop();
  }
}
