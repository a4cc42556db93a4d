import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Context } from '@temporalio/activity';
import { armClientsFor } from '../azure/credential';
import { withManagedDiskRead } from '../azure/managed-disk-read';
import type { AppConfig } from '../config';
import type { AzurePlan } from '../domain/azure';
import { FailureType, RestoreError } from '../domain/errors';
import type { VSpherePlan } from '../domain/vsphere';
import type { VerificationReport, VerifyNetwork } from '../domain/verification';
import type { ArmClients } from '../azure/arm-clients';
import { verifyBoot, type BootNetwork, type BootReport, type BootRequest } from '../verify';
import { downloadDatastoreFile, flatFileName, parseDatastorePath } from '../vsphere';
import { withFailureMapping } from './failures';
import { VSphereSessions } from './vsphere/sessions';
import { MiB } from '../domain/units';
import { copyRangesToSparseFile, copyToSparseFile } from '../sparse-file';

/**
 * The `verifyBoot` activity: reads what the target holds back into local sparse files and boots it in the
 * verification lab (qemu, an isolated user-mode network), presented as the target presents the VM.
 * vSphere: the flat extents of the restored VM's disks in its order, through the datastore HTTP API, with
 * the VM's firmware and its NIC's MAC. Azure: the managed disks through grant access (a read SAS), OS disk
 * first, a blank temporary resource disk second, data disks after, SeaBIOS for Generation 1 and OVMF for
 * Generation 2.
 */

export type VerifyBootInput =
  | { target: 'vsphere'; plan: VSpherePlan; vmRef: string; network?: VerifyNetwork; timeoutSeconds?: number }
  | { target: 'azure'; plan: AzurePlan; timeoutSeconds?: number };

/** Heartbeat details: what the verification is doing, for `status` and the Web UI. */
export interface VerifyHeartbeat {
  step: 'reading-disks' | 'booting';
  bytesRead: number;
  bytesTotal: number;
  elapsedSeconds: number;
}

/** A disk read back from the target into a local file. */
interface LocalDisk {
  path: string;
  role: VerificationReport['disks'][number]['role'];
  source: string;
  bytes: number;
  bytesRead: number;
}

export interface VerifyDeps {
  config: AppConfig;
  sessions: VSphereSessions;
}

const DEFAULT_TIMEOUT_S = 600;
/** The temporary resource disk an Azure VM gets as its second disk; blank, like a new one. */
const RESOURCE_DISK_BYTES = 4 * 1024 * MiB;
const AZURE_OUI = '00:0d:3a';

/** Serial log lines that look like credentials are dropped before the tail leaves the worker. */
function scrubSerial(tail: string | undefined): string | undefined {
  if (tail === undefined) return undefined;
  return tail
    .split('\n')
    .filter((l) => !/PRIVATE KEY|passw(or)?d\s*[:=]|secret\s*[:=]|token\s*[:=]|sig=/i.test(l))
    .join('\n');
}

/** The report a restore result carries: checks with times, no files, command line or traffic dump. */
export function trimReport(
  r: BootReport,
  extra: Pick<VerificationReport, 'disks' | 'nic' | 'network' | 'readSeconds'>,
): VerificationReport {
  return {
    verdict: r.verdict,
    firmware: r.firmware,
    accelerator: r.accelerator,
    recoveryTimeMs: r.recoveryTimeMs,
    sshBanner: r.sshBanner,
    stoppedBy: r.stoppedBy,
    checks: r.checks.map((c) => ({ name: c.name, status: c.status, required: c.required, elapsedMs: c.elapsedMs, detail: c.detail })),
    ...extra,
    bootSeconds: Math.round(r.durationMs / 100) / 10,
    serialTail: r.verdict === 'failed' ? scrubSerial(r.serialTail) : undefined,
    whileUpError: r.whileUpError,
  };
}

/** The isolated network for a guest with a static address: its own subnet, qemu answering at its gateway. */
export function staticNetwork(n: VerifyNetwork): BootNetwork & { subnet: string; guestAddress: string } {
  const prefix = n.prefixLength ?? 24;
  const octets = n.address.split('.').map(Number);
  const value = octets.reduce((a, o) => a * 256 + o, 0);
  const size = 2 ** (32 - prefix);
  const base = value - (value % size);
  const ip = (v: number) => [24, 16, 8, 0].map((s) => Math.floor(v / 2 ** s) % 256).join('.');
  const gateway = n.gateway ?? ip(base + 1);
  if (gateway === n.address) {
    throw new RestoreError(FailureType.InvalidRequest, `verifyNetwork: gateway ${gateway} is the guest's own address`);
  }
  // qemu's DHCP range must lie in the subnet and avoid the guest and its gateway.
  const dhcpStart = [base + 100, base + 15, base + 3].map(ip).find((a) => a !== n.address && a !== gateway && size > 8);
  return { subnet: `${ip(base)}/${prefix}`, host: gateway, guestAddress: n.address, dhcpStart };
}

/** A MAC in Azure's OUI, stable per restore: Azure assigns the NIC's MAC only when the NIC is created. */
function azureMac(restoreId: string): string {
  const h = createHash('sha256').update(restoreId).digest();
  return `${AZURE_OUI}:${[h[0], h[1], h[2]].map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
}

export function createVerifyActivities(deps: VerifyDeps) {
  const { config, sessions } = deps;
  let arm: ArmClients | undefined;
  const clients = (): ArmClients => {
    if (!config.azure) throw new RestoreError(FailureType.Configuration, 'no Azure target is configured (config key "azure")');
    arm ??= armClientsFor(config.azure, { maxRetries: 6, retryDelayInMs: 200, maxRetryDelayInMs: 5000 });
    return arm;
  };

  async function readVSphere(
    input: Extract<VerifyBootInput, { target: 'vsphere' }>,
    dir: string,
    progress: (n: number, total?: number) => void,
    signal: AbortSignal,
  ) {
    const { plan } = input;
    const client = await sessions.get(plan.profile);
    const cfg = await client.vm(input.vmRef).config();
    if (cfg.extraConfig['vmrestore.restoreId'] !== plan.restoreId) {
      throw new RestoreError(FailureType.NotFound, `VM ${input.vmRef} is not the VM restore ${plan.restoreId} made; not verifying it`);
    }
    // The order the guest sees: controller (bus) then unit number, as its /dev/sdX names follow.
    const disks = [...cfg.disks].sort((a, b) => a.controllerKey - b.controllerKey || a.unitNumber - b.unitNumber);
    progress(
      0,
      disks.reduce((a, d) => a + d.capacityBytes, 0),
    );
    const out: LocalDisk[] = [];
    for (const [i, d] of disks.entries()) {
      const flat = flatFileName(d.fileName);
      const { datastore, path: rel } = parseDatastorePath(flat);
      const file = path.join(dir, `disk${i}.raw`);
      const dl = await downloadDatastoreFile(client, { datacenter: plan.datacenter, datastore, path: rel, signal });
      const size = dl.totalSize ?? d.capacityBytes;
      if (size !== d.capacityBytes) {
        dl.body.destroy();
        throw new RestoreError(FailureType.VSphereFault, `${flat} holds ${size} bytes, the disk's capacity is ${d.capacityBytes}`, false);
      }
      const bytesRead = await copyToSparseFile(dl.body, file, size, (n) => progress(n));
      out.push({ path: file, role: i === 0 ? 'os' : 'data', source: flat, bytes: size, bytesRead });
    }
    // The MAC the guest knows (its persistent-net rule was written for it) is the one of the VM as it was
    // backed up; the restored VM's own is the fallback.
    const backedUp = plan.vm.nics[0]?.macAddress;
    const restored = cfg.nics[0]?.macAddress;
    const mac = backedUp ?? restored;
    if (!mac) throw new RestoreError(FailureType.InvalidRequest, `VM '${plan.vmName}' has no NIC with a MAC address to verify with`);
    return {
      firmware: cfg.firmware,
      disks: out,
      mac: mac.toLowerCase(),
      macFrom: backedUp ? 'the backed-up VM config' : 'the restored VM config',
    };
  }

  async function readAzure(
    input: Extract<VerifyBootInput, { target: 'azure' }>,
    dir: string,
    progress: (n: number, total?: number) => void,
    signal: AbortSignal,
  ) {
    const { plan } = input;
    const ordered = [...plan.disks.filter((d) => d.os), ...plan.disks.filter((d) => !d.os)];
    progress(
      0,
      ordered.reduce((a, d) => a + d.capacityBytes, 0),
    );
    const read = async (d: (typeof ordered)[number], i: number): Promise<LocalDisk> => {
      const file = path.join(dir, `disk${i}.raw`);
      const { bytes, bytesRead } = await withManagedDiskRead(
        clients(),
        d.managedDiskId,
        // Only the written pages travel; the rest of the disk stays a hole in the local copy.
        async (reader) => ({ bytes: reader.dataSize, bytesRead: await copyRangesToSparseFile(reader, file, (n) => progress(n)) }),
        { caCertPath: config.azure?.caCertPath, signal, durationSeconds: 3600 },
      );
      return {
        path: file,
        role: d.os ? ('os' as const) : ('data' as const),
        source: `managed disk ${d.managedDiskName}`,
        bytes,
        bytesRead,
      };
    };
    const os0 = await read(ordered[0], 0);
    const resource = path.join(dir, 'resource.raw');
    await fsp.writeFile(resource, '');
    await fsp.truncate(resource, RESOURCE_DISK_BYTES);
    const disks: LocalDisk[] = [
      os0,
      { path: resource, role: 'resource' as const, source: 'temporary resource disk (blank)', bytes: RESOURCE_DISK_BYTES, bytesRead: 0 },
    ];
    for (const [i, d] of ordered.slice(1).entries()) disks.push(await read(d, i + 2));
    return {
      firmware: plan.generation === 2 ? ('efi' as const) : ('bios' as const),
      disks,
      mac: azureMac(plan.restoreId),
      macFrom: "Azure's OUI (the NIC is created after verification)",
    };
  }

  return {
    /** Reads the restored disks from the target and boots them; a failed boot is a report, not an error. */
    async verifyBoot(input: VerifyBootInput): Promise<VerificationReport> {
      const ctx = Context.current();
      const started = Date.now();
      const beat: VerifyHeartbeat = { step: 'reading-disks', bytesRead: 0, bytesTotal: 0, elapsedSeconds: 0 };
      const send = () => ctx.heartbeat({ ...beat, elapsedSeconds: Math.round((Date.now() - started) / 1000) });
      send();
      const timer = setInterval(send, 5_000);
      const dir = await fsp.mkdtemp(path.join(os.tmpdir(), `vmrestore-verify-${input.plan.vmName.replace(/[^\w.-]/g, '_')}-`));
      const disksDir = path.join(dir, 'disks');
      await fsp.mkdir(disksDir);
      try {
        const progress = (n: number, total?: number) => {
          beat.bytesRead += n;
          if (total !== undefined) beat.bytesTotal = total;
        };
        const signal = ctx.cancellationSignal;
        const got =
          input.target === 'vsphere'
            ? await readVSphere(input, disksDir, progress, signal)
            : await readAzure(input, disksDir, progress, signal);
        const readSeconds = Math.round((Date.now() - started) / 100) / 10;
        beat.step = 'booting';
        send();
        const staticNet = input.target === 'vsphere' && input.network ? staticNetwork(input.network) : undefined;
        const req: BootRequest = {
          name: input.plan.vmName.replace(/[^\w.-]/g, '_'),
          firmware: got.firmware,
          disks: got.disks.map((d) => ({ path: d.path, role: d.role })),
          scsiController: 'virtio-scsi',
          nic: { model: 'virtio-net-pci', mac: got.mac },
          network: staticNet,
          // A static guest asks for no lease; VMware guests need no serial console, Azure Linux guests do.
          expect: { dhcp: !staticNet, serialConsole: input.target === 'azure' && input.plan.osType === 'Linux' },
          timeoutMs: (input.timeoutSeconds ?? DEFAULT_TIMEOUT_S) * 1000,
          workDir: path.join(dir, 'boot'),
          signal,
        };
        const report = await verifyBoot(req);
        // A cancelled boot is not a verdict.
        if (signal.aborted) throw signal.reason ?? new Error('boot verification cancelled');
        return trimReport(report, {
          disks: got.disks.map((d) => ({ role: d.role, source: d.source, bytes: d.bytes, bytesRead: d.bytesRead })),
          nic: { model: 'virtio-net-pci', mac: got.mac, macFrom: got.macFrom },
          network: {
            subnet: staticNet?.subnet ?? '10.0.2.0/24',
            guestAddress: report.sshForward.guestAddress,
            dhcp: !staticNet,
          },
          readSeconds,
        });
      } finally {
        clearInterval(timer);
        // The local copies are as large as the disks; the boot's logs stay for a look afterwards.
        await fsp.rm(disksDir, { recursive: true, force: true });
      }
    },
  };
}

export type VerifyActivities = ReturnType<typeof createVerifyActivities>;

export function createMappedVerifyActivities(deps: VerifyDeps): VerifyActivities {
  return withFailureMapping(createVerifyActivities(deps));
}
