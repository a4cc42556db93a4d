import path from 'node:path';
import { parseArgs } from 'node:util';
import type { Client } from '@temporalio/client';
import { insecureWarnings, labStateDir, loadAppConfig, type AppConfig } from '../config';
import { FailureType, RestoreError } from '../domain/errors';
import type { DiskFormat, TransportRequest } from '../domain/vsphere';
import { DISK_FORMATS, TRANSPORT_REQUESTS } from '../domain/vsphere';
import { TASK_QUEUE } from '../domain/task-queues';
import {
  importOvaRestorePoint,
  importOvfRestorePoint,
  importRestorePoint,
  getRestorePoint,
  listRestorePoints,
  verifyRepository,
} from '../repository';
import {
  connectClient,
  failureMessage,
  fmtBytes,
  getRestoreStatus,
  startAzureRestore,
  startVSphereRestore,
  waitWithProgress,
} from '../client/restore';
import { azureRestoreRequest, vsphereRestoreRequest } from './restore-requests';
import type { RestoreVerification, VerifyRequestFields } from '../domain/verification';
import { runWorker } from '../worker';
import { diskPercent, formatEta, formatRate } from '../domain/progress';
import { createProgressView } from './progress-view';
import { AesGcmCodec, loadCodecServerToken, startCodecServer } from '../client/codec';
import { loadLab, loadLabDemo } from './lab-door';
import { ensureExternalTools } from '../prereqs';
import { formatSweepReport, installSweepSchedule, runSweep } from '../client/sweep';
import { VERIFY_USAGE, verifyCommand } from './verify-command';
import { importFromVSphereCommand } from './import-command';
import { PLAN_USAGE, planCommand } from './plan-command';

export { TASK_QUEUE };
export { startVSphereRestore, getRestoreStatus, vsphereWorkflowId } from '../client/restore';
export type { VSphereRestoreRequest, VSphereRestoreResult } from '../domain/vsphere';

const USAGE = `vmrestore: restore whole VMs from backups to vSphere (and Azure) on Temporal

  vmrestore lab up|status|down [--json] [--purge]
  vmrestore repo import --vm vm.json | --ovf vm.ovf | --ova vm.ova [--json]
  vmrestore repo import --from-vsphere VM [--profile P] [--datacenter DC] [--json]   (a restore point of a running VM, as a workflow)
  vmrestore repo list|show ID|verify [ID] [--json]
  vmrestore repo seed-demo [--bootable-guests] [--json]   (or VMRESTORE_DEMO_BOOTABLE_GUESTS=1)
  vmrestore codec-server [--port 8888] [--host ADDR] [--origin URL]... [--allowed-host NAME]...
        [--token-file FILE]   (decrypts payloads for the Web UI; bearer token from VMRESTORE_CODEC_TOKEN or the file)
  vmrestore worker [--helper LOCATION | --verifier] [--metrics HOST:PORT]   (--helper: the worker inside that
        location's helper appliance; --verifier: only boot verification, on a machine with qemu; --metrics: serve
        Prometheus metrics at /metrics; traces go by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set)
  vmrestore restore vsphere --restore-point ID --vm-name NAME [--datastore DS] [--folder F]
        [--resource-pool P] [--network SRC=DST]... [--transport auto|direct-san|direct-nas|hotadd|nbd]
        [--disk-format same|thin|thick-lazy|thick-eager] [--proxy NAME] [--power-on]
        [--keep-on-failure] [--throttle-mbps N] [--wait] [--json]
        [--verify [--verify-address IP/N [--verify-gateway IP]] [--verify-timeout S] [--keep-on-verify-failure]]
  vmrestore restore azure --restore-point ID --vm-name NAME [--resource-group RG] [--location L]
        [--vm-size S] [--subnet ID] [--generation 1|2] [--proxy NAME] [--keep-on-failure] [--wait] [--json]
        [--verify [--verify-timeout S] [--keep-on-verify-failure]]
  vmrestore status WORKFLOW_ID [--json]
  vmrestore cancel WORKFLOW_ID
${PLAN_USAGE}
  vmrestore sweep [--dry-run] [--include-orphans] [--json] | --install-schedule [--every MINUTES]
        (remove what restores that closed without completing left behind)
${VERIFY_USAGE}
  vmrestore demo            (what npm start runs)
  vmrestore prereqs [--for start|test] [--no-install]   (checks, and as root installs, the Debian tools)
  vmrestore version         (vmrestore's version and the Node.js it runs on)
`;

const out = (s: string) => process.stdout.write(s + '\n');
const err = (s: string) => process.stderr.write(s + '\n');

/** The config for a command that talks to Temporal or vCenter; warns about profiles allowed to skip TLS. */
function loadConfig(): AppConfig {
  const config = loadAppConfig();
  for (const w of insecureWarnings(config)) err(w);
  return config;
}

function usageError(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, `${message}\n\n${USAGE}`);
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  try {
    switch (cmd) {
      case 'lab':
        return await labCommand(sub, rest);
      case 'repo':
        return await repoCommand(sub, rest);
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

async function labCommand(sub: string | undefined, args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' }, purge: { type: 'boolean' }, quiet: { type: 'boolean' } } });
  const log = values.quiet || values.json ? () => {} : out;
  const { labDown, labStatus, labUp } = await loadLab();
  if (sub === 'up') {
    await labUp(log);
    const s = labStatus();
    if (values.json) out(JSON.stringify(s, null, 2));
    else if (!values.quiet)
      out(`lab ready: Temporal ${s.temporal?.address} (UI ${s.temporal?.ui}), vCenter ${s.vsphere?.url}, blob ${s.blob ? 'up' : 'down'}`);
    return 0;
  }
  if (sub === 'status') {
    const s = labStatus();
    if (values.json) out(JSON.stringify(s, null, 2));
    else {
      out(
        `temporal: ${s.temporal ? `${s.temporal.running ? 'running' : 'stopped'} ${s.temporal.address} UI ${s.temporal.ui}` : 'not started'}`,
      );
      out(`vsphere:  ${s.vsphere ? `${s.vsphere.running ? 'running' : 'stopped'} ${s.vsphere.url}` : 'not started'}`);
      out(`blob:     ${s.blob ? (s.blob.running ? 'running' : 'stopped') : 'not started'}`);
      out(`azure:    ${s.azure ? (s.azure.running ? `running ${String(s.azure.armEndpoint)}` : 'stopped') : 'not started'}`);
    }
    return 0;
  }
  if (sub === 'down') {
    await labDown({ purge: values.purge }, log);
    return 0;
  }
  usageError(`unknown lab command '${sub ?? ''}'`);
}

async function repoCommand(sub: string | undefined, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      vm: { type: 'string' },
      ovf: { type: 'string' },
      ova: { type: 'string' },
      'from-vsphere': { type: 'string' },
      profile: { type: 'string' },
      datacenter: { type: 'string' },
      'bootable-guests': { type: 'boolean' },
    },
  });
  const repo = repositoryPath();
  switch (sub) {
    case 'import': {
      const sources = [values.vm, values.ovf, values.ova, values['from-vsphere']].filter((v) => v !== undefined);
      if (sources.length !== 1) usageError('repo import needs exactly one of --vm vm.json, --ovf vm.ovf, --ova vm.ova, --from-vsphere VM');
      if (values['from-vsphere'] !== undefined) {
        const config = loadConfig();
        return importFromVSphereCommand(
          config,
          { vmName: values['from-vsphere'], profile: values.profile, datacenter: values.datacenter },
          out,
          values.json,
        );
      }
      if (values.profile !== undefined || values.datacenter !== undefined) usageError('--profile and --datacenter go with --from-vsphere');
      const res = values.vm
        ? await importRestorePoint(repo, values.vm)
        : values.ovf
          ? await importOvfRestorePoint(repo, values.ovf)
          : await importOvaRestorePoint(repo, values.ova!);
      if (values.json) out(JSON.stringify({ restorePointId: res.restorePointId, parentId: res.parentId, stats: res.stats }));
      else out(`restore point ${res.restorePointId} (parent ${res.parentId ?? 'none'}): ${JSON.stringify(res.stats)}`);
      return 0;
    }
    case 'list': {
      const list = await listRestorePoints(repo);
      if (values.json) out(JSON.stringify(list, null, 2));
      else for (const r of list) out(`${r.id}  ${r.vmName}  ${r.createdAt}  parent=${r.parentId ?? '-'}`);
      return 0;
    }
    case 'show': {
      if (!positionals[0]) usageError('repo show needs a restore point id');
      const rp = await getRestorePoint(repo, positionals[0]);
      const { disks, ...head } = rp;
      const summary = {
        ...head,
        disks: disks.map((d) => ({
          index: d.index,
          capacityBytes: d.capacityBytes,
          blocks: d.blocks.length,
          zeroBlocks: d.blocks.filter((b) => b === null).length,
        })),
      };
      out(JSON.stringify(summary, null, 2));
      return 0;
    }
    case 'verify': {
      const res = await verifyRepository(repo, { restorePointId: positionals[0] });
      if (values.json) out(JSON.stringify(res, null, 2));
      else {
        out(`${res.ok ? 'OK' : 'PROBLEMS'}: ${res.chunksChecked} chunks, ${res.bytesChecked} bytes checked`);
        for (const p of res.problems)
          out(`  ${p.restorePointId} VM '${p.vmName}' disk ${p.diskIndex} offset ${p.offset}: chunk ${p.chunk} ${p.problem}`);
      }
      return res.ok ? 0 : 1;
    }
    case 'seed-demo': {
      const seeded = await (
        await loadLabDemo()
      ).seedDemoRepository(repo, values.json ? () => {} : out, { bootableGuests: values['bootable-guests'] });
      if (values.json) out(JSON.stringify(seeded));
      return 0;
    }
    default:
      usageError(`unknown repo command '${sub ?? ''}'`);
  }
}

function repositoryPath(): string {
  if (process.env.VMRESTORE_REPOSITORY) return process.env.VMRESTORE_REPOSITORY;
  try {
    return loadAppConfig().repository.path;
  } catch {
    // Repository commands work without a running lab.
    return path.join(labStateDir(), 'repository');
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
    options: { helper: { type: 'string' }, verifier: { type: 'boolean' }, metrics: { type: 'string' } },
    allowPositionals: false,
  });
  // runWorker prints the insecure-profile warnings itself.
  const config = loadAppConfig();
  const stop = new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await runWorker({ config, log: out, until: stop, helperLocation: values.helper, verifier: values.verifier, metrics: values.metrics });
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

async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (!positionals[0]) usageError('status needs a workflow id');
  const config = loadConfig();
  const { client, connection } = await connectClient(config);
  try {
    const s = await getRestoreStatus(client, positionals[0]);
    const status = s.status === 'CANCELLED' ? 'CANCELED' : s.status;
    if (values.json) {
      out(
        JSON.stringify({
          workflowId: s.workflowId,
          status,
          phase: s.phase,
          disks: s.disks.map((d) => ({
            diskIndex: d.diskIndex,
            label: d.label,
            transport: d.transport,
            state: d.state,
            bytesDone: d.bytesDone,
            bytesTotal: d.bytesTotal,
            bytesPerSecond: d.bytesPerSecond,
            etaSeconds: d.etaSeconds,
          })),
          result: s.result,
          verification: verificationOf(s.result, s.failureDetails),
          error: s.failure,
        }),
      );
    } else {
      out(`${s.workflowId}: ${status} (${s.phase})`);
      for (const d of s.disks) {
        const live = d.state === 'writing' ? `, ${formatRate(d.bytesPerSecond)}, ETA ${formatEta(d.etaSeconds)}` : '';
        out(
          `  disk ${d.diskIndex} ${d.label} [${d.transport ?? '-'}] ${d.state} ${fmtBytes(d.bytesDone)} / ${fmtBytes(d.bytesTotal)} ` +
            `(${diskPercent(d)}%${live})`,
        );
      }
      printGuestWarnings(s.result);
      printVerification(s.result, s.failureDetails);
      if (s.failure) out(`  error: ${s.failure}`);
    }
    return 0;
  } finally {
    await connection.close();
  }
}

/** The verification a result carries, or a failed restore's (in its failure details). */
function verificationOf(result: unknown, failureDetails: unknown): RestoreVerification | undefined {
  const fromResult = (result as { verification?: RestoreVerification } | undefined)?.verification;
  if (fromResult) return fromResult;
  const d = failureDetails as RestoreVerification | undefined;
  return d && typeof d === 'object' && 'status' in d ? d : undefined;
}

/** The boot verification: verdict, time to SSH banner, each check with its time; the serial tail on failure. */
function printVerification(result: unknown, failureDetails: unknown): void {
  const v = verificationOf(result, failureDetails);
  if (!v) return;
  const r = v.report;
  if (!r) {
    out(`  boot verification: ${v.status}`);
    return;
  }
  const banner = r.recoveryTimeMs === undefined ? 'no SSH banner' : `SSH banner after ${(r.recoveryTimeMs / 1000).toFixed(1)} s`;
  out(
    `  boot verification: ${v.status}${v.kept ? ' (VM kept)' : ''}, ${r.firmware}/${r.accelerator}, ${banner}, stopped by ${r.stoppedBy}`,
  );
  for (const c of r.checks) {
    const at = c.elapsedMs === undefined ? '' : ` at ${(c.elapsedMs / 1000).toFixed(1)} s`;
    out(`    ${c.status.padEnd(7)} ${c.name}${c.required ? '' : ' (not required)'}${at}: ${c.detail}`);
  }
  if (r.serialTail) {
    out('    serial console (last lines):');
    for (const l of r.serialTail.split('\n')) out(`      ${l}`);
  }
}

/** Guest preparation warnings of an Azure restore result, one line each. */
function printGuestWarnings(result: unknown): void {
  const warnings = (result as { guestWarnings?: unknown } | undefined)?.guestWarnings;
  if (!Array.isArray(warnings)) return;
  for (const w of warnings) out(`  guest warning: ${String(w)}`);
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
