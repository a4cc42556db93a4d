import type { Resource } from '@opentelemetry/resources';
import type { SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { WorkflowClientInterceptor } from '@temporalio/client';
import type { OpenTelemetryPlugin } from '@temporalio/interceptors-opentelemetry';
import type { AppConfig } from '../config';

// Loaded only once tracing is on, so a CLI run without it does not pay for the OpenTelemetry SDK.
const otel = () => ({
  ...(require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http')),
  ...(require('@opentelemetry/resources') as typeof import('@opentelemetry/resources')),
  ...(require('@opentelemetry/sdk-trace-base') as typeof import('@opentelemetry/sdk-trace-base')),
  ...(require('@opentelemetry/sdk-trace-node') as typeof import('@opentelemetry/sdk-trace-node')),
  ...(require('@temporalio/interceptors-opentelemetry') as typeof import('@temporalio/interceptors-opentelemetry')),
});

/** Where spans go, when anything says so: the config's telemetry.otlpEndpoint, or the standard OTEL_ variables. */
export function tracingEndpoint(
  config: Pick<AppConfig, 'telemetry'> | undefined,
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  if (env.OTEL_SDK_DISABLED === 'true' || env.OTEL_TRACES_EXPORTER === 'none') return undefined;
  return config?.telemetry?.otlpEndpoint ?? env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? env.OTEL_EXPORTER_OTLP_ENDPOINT ?? undefined;
}

export interface Tracing {
  processor: SpanProcessor;
  resource: Resource;
  /** Flushes and stops exporting. */
  shutdown(): Promise<void>;
}

let installed: Tracing | undefined;

/**
 * Installs one process-wide tracer provider that exports spans by OTLP/HTTP (JSON) when an endpoint is
 * configured; returns undefined otherwise. The first caller names the service (OTEL_SERVICE_NAME wins).
 */
export function installTracing(config: Pick<AppConfig, 'telemetry'> | undefined, serviceName: string): Tracing | undefined {
  if (installed) return installed;
  const endpoint = tracingEndpoint(config);
  if (endpoint === undefined) return undefined;
  // A configured endpoint is the collector's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is; the variables the exporter reads itself.
  const fromConfig = config?.telemetry?.otlpEndpoint;
  const { OTLPTraceExporter, Resource, BatchSpanProcessor, NodeTracerProvider } = otel();
  const exporter = new OTLPTraceExporter(fromConfig ? { url: `${fromConfig.replace(/\/+$/, '')}/v1/traces` } : {});
  const resource = new Resource({ 'service.name': process.env.OTEL_SERVICE_NAME || serviceName });
  const processor = new BatchSpanProcessor(exporter);
  const provider = new NodeTracerProvider({ resource, spanProcessors: [processor] });
  // The global provider (activity and client spans), W3C trace context, and async context across awaits.
  provider.register();
  let stopping: Promise<void> | undefined;
  const shutdown = () => (stopping ??= provider.shutdown().catch(() => undefined));
  // A CLI process ends when its loop empties: export what is left first.
  process.once('beforeExit', () => void shutdown());
  installed = { processor, resource, shutdown };
  return installed;
}

/** Client interceptors that start each workflow inside a span and pass its context to the workflow. */
export function tracingClientInterceptors(
  config: Pick<AppConfig, 'telemetry'>,
  serviceName = 'vmrestore-cli',
): WorkflowClientInterceptor[] {
  return installTracing(config, serviceName) ? [new (otel().OpenTelemetryWorkflowClientInterceptor)()] : [];
}

/** The SDK's plugin that traces workflows (exported through a sink) and activities, for Worker.create. */
export function tracingWorkerPlugin(tracing: Tracing): OpenTelemetryPlugin {
  return new (otel().OpenTelemetryPlugin)({ resource: tracing.resource, spanProcessor: tracing.processor });
}
