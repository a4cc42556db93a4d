import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Client } from '@temporalio/client';
import { loadAppConfig, type AppConfig } from '../config';
import { FailureType, RestoreError } from '../domain/errors';
import type { DiskFormat, TransportRequest } from '../domain/vsphere';
import { DISK_FORMATS, TRANSPORT_REQUESTS } from '../domain/vsphere';
import { TASK_QUEUE } from '../domain/task-queues';
import { connectClient, failureMessage, startAzureRestore, startVSphereRestore, waitWithProgress } from '../client/restore';
import { azureRestoreRequest, vsphereRestoreRequest } from './restore-requests';
import type { VerifyRequestFields } from '../domain/verification';
import { runWorker } from '../worker';
import { createProgressView } from './progress-view';
import { AesGcmCodec, loadCodecServerToken, startCodecServer } from '../client/codec';
import { loadLabDemo } from './lab-door';
import { ensureExternalTools } from '../prereqs';
import { formatSweepReport, installSweepSchedule, runSweep } from '../client/sweep';
import { verifyCommand } from './verify-command';
import { planCommand } from './plan-command';
import { labCommand } from './lab-command';
import { repoCommand } from './repo-command';
import { repositoryCommand } from './repository-command';
import { printGuestWarnings, printVerification, statusCommand } from './status-command';
import { err, loadConfig, out, USAGE, usageError } from './usage';

export { TASK_QUEUE };
export { startVSphereRestore, getRestoreStatus, vsphereWorkflowId } from '../client/restore';
export type { VSphereRestoreRequest, VSphereRestoreResult } from '../domain/vsphere';

export async function main(argv: string[]): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  try {
    switch (cmd) {
      case 'lab':
        return await labCommand(sub, rest);
      case 'repo':
        return await repoCommand(sub, rest);
      case 'repository':
        return await repositoryCommand(sub, rest);
      case 'worker':
        return await workerCommand(sub === undefined ? [] : [sub, ...rest]);
      case 'codec-server':
        return await codecServerCommand(sub === undefined ? [] : [sub, ...rest]);
      case 'restore':
        return await restoreCommand(sub, rest);
      case 'status':
        return await statusCommand([sub, ...rest].filter((x) => x !== undefined));
      case 'cancel':
        return await cancelCommand(sub);
      case 'plan':
        return await planCommand(sub, rest, out);
      case 'sweep':
        return await sweepCommand([sub, ...rest].filter((x) => x !== undefined));
      case 'demo':
        return await (await loadLabDemo()).runDemo({ log: out });
      case 'prereqs':
        return prereqsCommand([sub, ...rest].filter((x) => x !== undefined));
      case 'verify':
        return await verifyCommand(sub === undefined ? [] : [sub, ...rest], out);
      case 'version':
      case '--version':
        out(
          `vmrestore ${(require('../../package.json') as { version: string }).version} on Node.js ${process.version} (${process.execPath})`,
        );
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        out(USAGE);
        return 0;
      default:
        usageError(`unknown command '${cmd}'`);
    }
  } catch (e) {
    err(`vmrestore: ${e instanceof Error ? e.message : String(e)}`);
    return e instanceof RestoreError && e.type === FailureType.InvalidRequest ? 2 : 1;
  }
}

async function codecServerCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      origin: { type: 'string', multiple: true },
      'allowed-host': { type: 'string', multiple: true },
      'token-file': { type: 'string' },
    },
  });
  const config = loadConfig();
  if (!config.temporal.encryption)
    usageError('codec-server needs payload encryption configured (temporal.encryption or VMRESTORE_ENCRYPTION_KEY_FILE)');
  const origins = values.origin ?? [config.temporal.uiUrl ?? 'http://localhost:8233'].map((u) => new URL(u).origin);
  const port = values.port === undefined ? 8888 : Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) usageError(`--port must be a port number, got '${values.port}'`);
  const tokenFile = path.resolve(values['token-file'] ?? path.join(path.dirname(config.source), 'codec-server.token'));
  const { token, created, source } = loadCodecServerToken(tokenFile);
  const server = await startCodecServer(AesGcmCodec.fromConfig(config.temporal.encryption), {
    port,
    host: values.host,
    allowOrigins: origins,
    allowedHosts: values['allowed-host'],
    token,
  });
  out(`codec server at ${server.url} for ${origins.join(', ')}: set it as the Codec Server in the Web UI's settings`);
  if (created) out(`new bearer token (shown once; stored in ${source}): ${token}`);
  else out(`bearer token from ${source}`);
  out(`Web UI codec endpoint: ${server.url}/t/<token>; CLI: --codec-endpoint ${server.url} --codec-auth "Bearer <token>"`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.close();
  return 0;
}

async function workerCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { helper: { type: 'string' }, verifier: { type: 'boolean' }, proxy: { type: 'string' }, metrics: { type: 'string' } },
    allowPositionals: false,
  });
  // runWorker prints the insecure-profile warnings itself.
  const config = loadAppConfig();
  const stop = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await runWorker({
    config,
    log: out,
    until: stop,
    helperLocation: values.helper,
    verifier: values.verifier,
    proxyName: values.proxy,
    metrics: values.metrics,
  });
  return 0;
}

async function restoreAzureCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      'restore-point': { type: 'string' },
      'vm-name': { type: 'string' },
      'resource-group': { type: 'string' },
      location: { type: 'string' },
      'vm-size': { type: 'string' },
      subnet: { type: 'string' },
      generation: { type: 'string' },
      proxy: { type: 'string' },
      'keep-on-failure': { type: 'boolean' },
      verify: { type: 'boolean' },
      'verify-timeout': { type: 'string' },
      'keep-on-verify-failure': { type: 'boolean' },
      wait: { type: 'boolean' },
      json: { type: 'boolean' },
    },
  });
  if (!values['restore-point']) usageError('--restore-point is required');
  if (!values['vm-name']) usageError('--vm-name is required');
  const generation = values.generation === undefined ? undefined : Number(values.generation);
  if (generation !== undefined && generation !== 1 && generation !== 2)
    usageError(`--generation must be 1 or 2, got '${values.generation}'`);
  const request = azureRestoreRequest({
    restorePointId: values['restore-point'],
    vmName: values['vm-name'],
    resourceGroup: values['resource-group'],
    location: values.location,
    vmSize: values['vm-size'],
    subnetId: values.subnet,
    generation: generation as 1 | 2 | undefined,
    proxy: values.proxy,
    keepOnFailure: values['keep-on-failure'] ?? false,
    ...verifyFlags(values),
  });
  const config = loadConfig();
  return startAndReport(config, (client) => startAzureRestore(client, request, { taskQueue: config.temporal.taskQueue }), values);
}

async function restoreCommand(kind: string | undefined, args: string[]): Promise<number> {
  if (kind === 'azure') return restoreAzureCommand(args);
  if (kind !== 'vsphere') usageError(`unknown restore target '${kind ?? ''}' (known: vsphere, azure)`);
  const { values } = parseArgs({
    args,
    options: {
      'restore-point': { type: 'string' },
      'vm-name': { type: 'string' },
      datastore: { type: 'string' },
      datacenter: { type: 'string' },
      folder: { type: 'string' },
      'resource-pool': { type: 'string' },
      network: { type: 'string', multiple: true },
      transport: { type: 'string' },
      'disk-format': { type: 'string' },
      proxy: { type: 'string' },
      profile: { type: 'string' },
      'power-on': { type: 'boolean' },
      'keep-on-failure': { type: 'boolean' },
      'throttle-mbps': { type: 'string' },
      verify: { type: 'boolean' },
      'verify-timeout': { type: 'string' },
      'keep-on-verify-failure': { type: 'boolean' },
      'verify-address': { type: 'string' },
      'verify-gateway': { type: 'string' },
      wait: { type: 'boolean' },
      json: { type: 'boolean' },
    },
  });
  if (!values['restore-point']) usageError('--restore-point is required');
  if (!values['vm-name']) usageError('--vm-name is required');
  const transport = (values.transport ?? 'auto') as TransportRequest;
  if (!TRANSPORT_REQUESTS.includes(transport)) usageError(`--transport '${transport}' is not one of ${TRANSPORT_REQUESTS.join(', ')}`);
  const diskFormat = (values['disk-format'] ?? 'same') as DiskFormat;
  if (!DISK_FORMATS.includes(diskFormat)) usageError(`--disk-format '${diskFormat}' is not one of ${DISK_FORMATS.join(', ')}`);
  const networkMap: Record<string, string> = {};
  for (const m of values.network ?? []) {
    const [src, dst] = m.split('=');
    if (!src || !dst) usageError(`--network '${m}' must look like SOURCE=TARGET`);
    networkMap[src] = dst;
  }
  const throttle = values['throttle-mbps'] === undefined ? undefined : Number(values['throttle-mbps']);
  if (throttle !== undefined && !(throttle >= 0)) usageError(`--throttle-mbps must be a number >= 0`);
  const request = vsphereRestoreRequest({
    restorePointId: values['restore-point'],
    vmName: values['vm-name'],
    datastore: values.datastore,
    datacenter: values.datacenter,
    folder: values.folder,
    resourcePool: values['resource-pool'],
    networkMap: Object.keys(networkMap).length ? networkMap : undefined,
    transport,
    diskFormat,
    proxy: values.proxy,
    profile: values.profile,
    powerOn: values['power-on'] ?? false,
    keepOnFailure: values['keep-on-failure'] ?? false,
    throttleMBps: throttle,
    ...verifyFlags(values),
  });
  const config = loadConfig();
  return startAndReport(config, (client) => startVSphereRestore(client, request, { taskQueue: config.temporal.taskQueue }), values);
}

/** The verification fields of a restore request from `--verify` and its companions. */
function verifyFlags(values: {
  verify?: boolean;
  'verify-timeout'?: string;
  'keep-on-verify-failure'?: boolean;
  'verify-address'?: string;
  'verify-gateway'?: string;
}): VerifyRequestFields {
  const companions = ['verify-timeout', 'keep-on-verify-failure', 'verify-address', 'verify-gateway'] as const;
  const stray = companions.find((k) => values[k] !== undefined);
  if (!values.verify) {
    if (stray) usageError(`--${stray} needs --verify`);
    return {};
  }
  const fields: VerifyRequestFields = { verify: true, keepOnVerifyFailure: values['keep-on-verify-failure'] ?? false };
  if (values['verify-timeout'] !== undefined) {
    const t = Number(values['verify-timeout']);
    if (!Number.isInteger(t) || t < 10 || t > 3600)
      usageError(`--verify-timeout must be whole seconds from 10 to 3600, got '${values['verify-timeout']}'`);
    fields.verifyTimeoutSeconds = t;
  }
  if (values['verify-address'] !== undefined) {
    const m = /^(\d+\.\d+\.\d+\.\d+)(?:\/(\d+))?$/.exec(values['verify-address']);
    if (!m) usageError(`--verify-address must look like 192.168.50.20/24, got '${values['verify-address']}'`);
    fields.verifyNetwork = {
      address: m[1],
      prefixLength: m[2] === undefined ? undefined : Number(m[2]),
      gateway: values['verify-gateway'],
    };
  } else if (values['verify-gateway'] !== undefined) {
    usageError('--verify-gateway needs --verify-address');
  }
  return fields;
}

/** Starts a restore; with --wait follows it to the end, printing progress or one JSON object. */
async function startAndReport(
  config: AppConfig,
  start: (client: Client) => Promise<{ workflowId: string }>,
  opts: { wait?: boolean; json?: boolean },
): Promise<number> {
  const { client, connection } = await connectClient(config);
  try {
    const { workflowId } = await start(client);
    if (!opts.wait) {
      out(opts.json ? JSON.stringify({ workflowId }) : `started ${workflowId}`);
      return 0;
    }
    const ui = config.temporal.uiUrl ? ` (${config.temporal.uiUrl}/namespaces/${config.temporal.namespace}/workflows/${workflowId})` : '';
    if (!opts.json) out(`started ${workflowId}${ui}`);
    const final = await waitWithProgress(client, workflowId, opts.json ? undefined : createProgressView({ print: out }));
    if (opts.json)
      out(JSON.stringify({ workflowId, status: final.status, phase: final.phase, result: final.result, error: final.failure }));
    else {
      printGuestWarnings(final.result);
      printVerification(final.result, final.failureDetails);
    }
    return final.status === 'COMPLETED' ? 0 : 1;
  } finally {
    await connection.close();
  }
}

async function cancelCommand(workflowId: string | undefined): Promise<number> {
  if (!workflowId) usageError('cancel needs a workflow id');
  const config = loadConfig();
  const { client, connection } = await connectClient(config);
  try {
    await client.workflow.getHandle(workflowId).cancel();
    out(`cancellation requested for ${workflowId}`);
    return 0;
  } finally {
    await connection.close();
  }
}

async function sweepCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      'dry-run': { type: 'boolean' },
      'include-orphans': { type: 'boolean' },
      json: { type: 'boolean' },
      'install-schedule': { type: 'boolean' },
      every: { type: 'string' },
    },
  });
  const config = loadAppConfig();
  const { client, connection } = await connectClient(config);
  try {
    if (values['install-schedule']) {
      const every = Number(values.every ?? 15);
      if (!Number.isInteger(every) || every < 1) usageError(`--every must be a whole number of minutes >= 1, got '${values.every}'`);
      const id = await installSweepSchedule(client, config.temporal.taskQueue, every);
      out(`schedule '${id}' runs the sweeper every ${every} min on task queue '${config.temporal.taskQueue}'`);
      return 0;
    }
    const report = await runSweep(client, config.temporal.taskQueue, {
      dryRun: values['dry-run'],
      includeOrphans: values['include-orphans'],
    });
    if (values.json) out(JSON.stringify(report));
    else for (const line of formatSweepReport(report)) out(line);
    return report.items.some((i) => i.action === 'failed') ? 1 : 0;
  } finally {
    await connection.close();
  }
}

export { failureMessage };

function prereqsCommand(args: string[]): number {
  const { values } = parseArgs({ args, options: { for: { type: 'string', default: 'start' }, 'no-install': { type: 'boolean' } } });
  if (values.for !== 'start' && values.for !== 'test') usageError(`--for must be start or test, got '${values.for}'`);
  ensureExternalTools(values.for, { install: !values['no-install'], log: err });
  return 0;
}
