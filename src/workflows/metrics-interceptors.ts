/** Not a workflow: the workflow interceptor that reports each restore's outcome and duration to the worker's metrics. */
import {
  ActivityFailure,
  ApplicationFailure,
  ChildWorkflowFailure,
  ContinueAsNew,
  isCancellation,
  proxySinks,
  TemporalFailure,
  workflowInfo,
  type Next,
  type WorkflowExecuteInput,
  type WorkflowInboundCallsInterceptor,
  type WorkflowInterceptorsFactory,
} from '@temporalio/workflow';
import type { RestoreMetricsSinks } from '../domain/metrics';

const { restoreMetrics } = proxySinks<RestoreMetricsSinks>();

/** The failure type to count: the innermost ApplicationFailure's type down the cause chain, else the failure's name. */
function failureType(err: TemporalFailure): string {
  let at: unknown = err;
  let type = err.name;
  for (let depth = 0; at instanceof TemporalFailure && depth < 8; depth++) {
    if (at instanceof ApplicationFailure && at.type) type = at.type;
    if (!(at instanceof ActivityFailure || at instanceof ChildWorkflowFailure || at instanceof ApplicationFailure)) break;
    at = at.cause;
  }
  return type;
}

class RestoreOutcomeInterceptor implements WorkflowInboundCallsInterceptor {
  async execute(input: WorkflowExecuteInput, next: Next<WorkflowInboundCallsInterceptor, 'execute'>): Promise<unknown> {
    const elapsed = () => Date.now() - workflowInfo().startTime.getTime();
    try {
      const result = await next(input);
      restoreMetrics.closed('completed', '', elapsed());
      return result;
    } catch (err) {
      if (err instanceof ContinueAsNew) throw err;
      if (isCancellation(err)) restoreMetrics.closed('cancelled', '', elapsed());
      // Anything but a TemporalFailure fails the workflow task, not the workflow: nothing closed.
      else if (err instanceof TemporalFailure) restoreMetrics.closed('failed', failureType(err), elapsed());
      throw err;
    }
  }
}

export const interceptors: WorkflowInterceptorsFactory = () => ({ inbound: [new RestoreOutcomeInterceptor()] });
