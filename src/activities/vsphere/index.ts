import { existsSync } from 'node:fs';
import { Context } from '@temporalio/activity';
import { DiskProgressReporter } from '../progress-report';
import type { AppConfig, ProxyConfig } from '../../config';
import { FailureType, RestoreError } from '../../domain/errors';
import { GiB } from '../../domain/units';
import {
  DISK_FORMATS,
  TRANSPORT_REQUESTS,
  type CreatedVm,
  type DiskCheckpoint,
  type DiskPlan,
  type DiskWriteResult,
  type TransportMode,
  type VSpherePlan,
  type VSphereRestoreRequest,
} from '../../domain/vsphere';
import { validateVSphereRestoreRequest } from '../../domain/validation';
import { diskLayout, getRestorePoint, readDiskBlocks, type RestorePoint } from '../../repository';
import { writeDiskToFile } from '../../transport/disk-writer';
import { pathInside } from '../../transport/paths';
import { ByteRateLimiter } from '../../transport/throttle';
import { flatFileName, parseDatastorePath, uploadDatastoreFile, type VSphereClient } from '../../vsphere';
import { withFailureMapping } from '../failures';
import { countedBlocks, restoredBytes } from '../../telemetry/metrics';
import { VSphereSessions } from './sessions';

/** extraConfig key that ties a VM to the restore that created it, so retries find it again. */
export const RESTORE_ID_KEY = 'vmrestore.restoreId';
const TRANSPORT_ORDER: TransportMode[] = ['direct-san', 'direct-nas', 'hotadd', 'nbd'];

export interface VSphereDeps {
  config: AppConfig;
  sessions: VSphereSessions;
}

function invalid(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, message);
}

function fmtGiB(bytes: number): string {
  return `${(bytes / GiB).toFixed(2)} GiB`;
}

/** Why a proxy cannot use a mode for a datastore, or undefined when it can. */
function transportBlocker(proxy: ProxyConfig, mode: TransportMode, datastore: string, anyThin: boolean): string | undefined {
  if (!proxy.transports.includes(mode)) return `proxy '${proxy.name}' is not configured for ${mode}`;
  if ((mode === 'direct-san' || mode === 'direct-nas') && anyThin) {
    return `${mode} is not available for VMs with thin-provisioned disks (direct storage access writes thick disks only)`;
  }
  if (mode === 'direct-san' && !proxy.sanMounts?.[datastore]) return `proxy '${proxy.name}' has no SAN access to datastore '${datastore}'`;
  if (mode === 'direct-nas' && !proxy.nasMounts?.[datastore]) return `proxy '${proxy.name}' has no NFS mount of datastore '${datastore}'`;
  if (mode === 'hotadd') {
    if (!proxy.vmName) return `proxy '${proxy.name}' is not a VM (no vmName), so it cannot hot-add disks`;
    if (!proxy.hotaddDevices?.[datastore]) return `proxy VM '${proxy.vmName}' cannot see datastore '${datastore}'`;
  }
  return undefined;
}

function localTargetPath(plan: VSpherePlan, proxy: ProxyConfig, mode: TransportMode, flatDatastorePath: string): string {
  const { datastore, path: rel } = parseDatastorePath(flatDatastorePath);
  const mounts = mode === 'direct-san' ? proxy.sanMounts : mode === 'direct-nas' ? proxy.nasMounts : proxy.hotaddDevices;
  const root = mounts?.[datastore];
  if (!root || !existsSync(root)) {
    throw new RestoreError(
      FailureType.TransportUnavailable,
      `${mode}: proxy '${proxy.name}' cannot reach datastore '${datastore}' (path ${root ?? 'not configured'})`,
    );
  }
  void plan;
  return pathInside(root, rel, `${mode} target of proxy '${proxy.name}' on datastore '${datastore}'`);
}

/** Runs tasks one at a time per key, in arrival order. */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<unknown>>();
  async run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(fn);
    this.tails.set(key, next);
    try {
      return await next;
    } finally {
      if (this.tails.get(key) === next) this.tails.delete(key);
    }
  }
}

export function createVSphereActivities(deps: VSphereDeps) {
  const { config, sessions } = deps;
  const proxyLocks = new KeyedLock();
  const restorePoints = new Map<string, Promise<RestorePoint>>();
  const loadRestorePoint = (id: string) => {
    let rp = restorePoints.get(id);
    if (!rp) {
      rp = getRestorePoint(config.repository.path, id);
      restorePoints.set(id, rp);
      rp.catch(() => restorePoints.delete(id));
    }
    return rp;
  };
  const proxyByName = (name: string): ProxyConfig => {
    const p = config.proxies.find((x) => x.name === name);
    if (!p) invalid(`proxy '${name}' is not configured (known: ${config.proxies.map((x) => x.name).join(', ') || 'none'})`);
    return p;
  };
  const proxyVm = async (client: VSphereClient, plan: VSpherePlan) => {
    const dc = await client.datacenter(plan.datacenter);
    const vm = plan.proxyVmName ? await client.findVmByName(dc, plan.proxyVmName) : null;
    if (!vm) {
      throw new RestoreError(FailureType.TransportUnavailable, `hotadd: proxy VM '${plan.proxyVmName}' not found in '${plan.datacenter}'`);
    }
    return vm;
  };

  return {
    /** Initialization: validate everything and decide the plan before anything is created. */
    async prepareVSphereRestore(req: VSphereRestoreRequest & { restoreId: string }): Promise<VSpherePlan> {
      validateVSphereRestoreRequest(req, TRANSPORT_REQUESTS, DISK_FORMATS);
      const transport = req.transport ?? 'auto';
      if (!TRANSPORT_REQUESTS.includes(transport)) invalid(`transport '${transport}' is not one of ${TRANSPORT_REQUESTS.join(', ')}`);
      const diskFormat = req.diskFormat ?? 'same';
      if (!DISK_FORMATS.includes(diskFormat)) invalid(`disk format '${diskFormat}' is not one of ${DISK_FORMATS.join(', ')}`);
      if (req.throttleMBps !== undefined && !(req.throttleMBps >= 0)) invalid(`throttleMBps must be >= 0, got ${req.throttleMBps}`);

      const rp = await loadRestorePoint(req.restorePointId);
      const profile = sessions.profileName(req.profile);
      const client = await sessions.get(profile);
      const profileCfg = config.vsphere.profiles[profile];
      const dc = await client.datacenter(req.datacenter ?? profileCfg.datacenter);
      const dsName = req.datastore ?? profileCfg.datastore;
      if (!dsName) invalid(`no datastore given and profile '${profile}' has no default datastore`);
      const ds = await client.datastore(dc, dsName);
      const folder = await client.folder(dc, req.folder);
      const pool = await client.resourcePool(dc, req.resourcePool);
      const networks: string[] = [];
      for (const nic of rp.vm.nics) {
        const target = req.networkMap?.[nic.network] ?? nic.network;
        networks.push((await client.network(dc, target)).name);
      }
      for (const src of Object.keys(req.networkMap ?? {})) {
        if (!rp.vm.nics.some((n) => n.network === src)) {
          invalid(
            `network map names source network '${src}', but VM '${rp.vm.name}' has NICs on: ${rp.vm.nics.map((n) => n.network).join(', ') || 'none'}`,
          );
        }
      }
      const existing = await client.findVmByName(dc, req.vmName);
      if (existing) {
        const cfg = await existing.config();
        if (cfg.extraConfig[RESTORE_ID_KEY] !== req.restoreId) {
          throw new RestoreError(
            FailureType.AlreadyExists,
            `a VM named '${req.vmName}' already exists in datacenter '${dc.name}'; choose another --vm-name`,
          );
        }
      }

      const disks: DiskPlan[] = rp.vm.disks.map((d) => {
        const layout = diskLayout(rp, d.index);
        const thin = diskFormat === 'thin' || (diskFormat === 'same' && d.provisioning === 'thin');
        return {
          diskIndex: d.index,
          label: d.label,
          capacityBytes: d.capacityBytes,
          nonZeroBytes: layout.nonZeroBytes,
          thin,
          eagerlyScrub: diskFormat === 'thick-eager',
          transports: [],
        };
      });
      const anyThin = disks.some((d) => d.thin);
      const requiredBytes = disks.reduce((sum, d) => sum + (d.thin ? d.nonZeroBytes : d.capacityBytes), 0);
      if (ds.freeSpaceBytes < requiredBytes) {
        throw new RestoreError(
          FailureType.InsufficientSpace,
          `datastore '${ds.name}' has ${fmtGiB(ds.freeSpaceBytes)} free; restoring '${rp.vm.name}' needs ${fmtGiB(requiredBytes)}`,
        );
      }

      const candidates = req.proxy ? [proxyByName(req.proxy)] : config.proxies.filter((p) => !p.profile || p.profile === profile);
      if (candidates.length === 0) invalid(`no proxy is configured for vSphere profile '${profile}'`);
      const wanted = transport === 'auto' ? TRANSPORT_ORDER : [transport];
      let best: { proxy: ProxyConfig; modes: TransportMode[] } | undefined;
      const reasons: string[] = [];
      for (const proxy of candidates) {
        const modes = wanted.filter((m) => {
          const why = transportBlocker(proxy, m, ds.name, anyThin);
          if (why) reasons.push(why);
          return !why;
        });
        if (modes.length === 0) continue;
        const rank = TRANSPORT_ORDER.indexOf(modes[0]);
        if (!best || rank < TRANSPORT_ORDER.indexOf(best.modes[0])) best = { proxy, modes };
      }
      if (!best) {
        const thinDisk = disks.find((d) => d.thin);
        const hint =
          anyThin && transport.startsWith('direct')
            ? ` (disk ${thinDisk?.diskIndex} is thin; use auto, hotadd or nbd, or --disk-format thick-eager)`
            : '';
        throw new RestoreError(
          FailureType.TransportUnavailable,
          `transport '${transport}' cannot be used for VM '${rp.vm.name}': ${[...new Set(reasons)].join('; ')}${hint}`,
        );
      }
      for (const d of disks) d.transports = best.modes;

      return {
        restoreId: req.restoreId,
        restorePointId: rp.id,
        vm: rp.vm,
        vmName: req.vmName,
        profile,
        datacenter: dc.name,
        datastore: ds.name,
        folder: folder.path,
        resourcePool: pool.path,
        networks,
        proxy: best.proxy.name,
        proxyVmName: best.proxy.vmName,
        disks,
        requiredBytes,
        freeBytes: ds.freeSpaceBytes,
        throttleMBps: req.throttleMBps ?? 0,
        diskConcurrency: req.diskConcurrency ?? config.restore.diskConcurrency,
        powerOn: req.powerOn ?? false,
        keepOnFailure: req.keepOnFailure ?? false,
      };
    },

    /**
     * Creates and registers the VM from the backed-up config; a retry finds the VM it made before. Only a
     * VM with both the plan's name and this restore's id is adopted: one with the name but another id (or
     * none) is someone else's, and one with our id but another name is not what the plan describes.
     */
    async createVm(plan: VSpherePlan): Promise<CreatedVm> {
      const client = await sessions.get(plan.profile);
      const dc = await client.datacenter(plan.datacenter);
      const found = await client.findVmsByExtraConfig(dc, RESTORE_ID_KEY, plan.restoreId);
      const renamed = found.filter((vm) => vm.name !== plan.vmName);
      if (renamed.length > 0) {
        throw new RestoreError(
          FailureType.AlreadyExists,
          `VM '${renamed[0].name}' carries this restore's id (${plan.restoreId}) but not the planned name '${plan.vmName}'; not adopting it`,
        );
      }
      if (found.length > 0) {
        const cfg = await found[0].config();
        return { vmRef: found[0].ref, vmName: cfg.name, diskFiles: cfg.disks.map((d) => d.fileName), created: false };
      }
      const sameName = await client.findVmByName(dc, plan.vmName);
      if (sameName) {
        const owner = (await sameName.config()).extraConfig[RESTORE_ID_KEY];
        throw new RestoreError(
          FailureType.AlreadyExists,
          `a VM named '${plan.vmName}' already exists in datacenter '${dc.name}' (${owner ? `restore ${owner}` : 'not made by a restore'}); choose another --vm-name`,
        );
      }
      const vm = await client.createVm(dc, {
        name: plan.vmName,
        folder: await client.folder(dc, plan.folder),
        pool: await client.resourcePool(dc, plan.resourcePool),
        datastore: await client.datastore(dc, plan.datastore),
        guestId: plan.vm.guestOs === 'windows' ? 'windows2019srv_64Guest' : 'otherLinux64Guest',
        cpus: plan.vm.cpus,
        memoryMiB: plan.vm.memoryMiB,
        firmware: plan.vm.firmware,
        extraConfig: { [RESTORE_ID_KEY]: plan.restoreId, 'vmrestore.restorePointId': plan.restorePointId },
        nics: plan.networks.map((network) => ({ network })),
        disks: plan.disks.map((d) => ({ capacityBytes: d.capacityBytes, thinProvisioned: d.thin, eagerlyScrub: d.eagerlyScrub })),
      });
      const cfg = await vm.config();
      return { vmRef: vm.ref, vmName: cfg.name, diskFiles: cfg.disks.map((d) => d.fileName), created: true };
    },

    async createSnapshot(args: { plan: VSpherePlan; vmRef: string }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      await client.vm(args.vmRef).createSnapshot(`vmrestore-${args.plan.restoreId}`, 'restore in progress');
    },

    async commitSnapshot(args: { plan: VSpherePlan; vmRef: string }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      await client.vm(args.vmRef).removeSnapshot(`vmrestore-${args.plan.restoreId}`, { consolidate: true });
    },

    /** The ESXi host the restored VM is registered on: what a per-host limit counts against. */
    async vmHostName(args: { plan: VSpherePlan; vmRef: string }): Promise<string> {
      const client = await sessions.get(args.plan.profile);
      return client.vm(args.vmRef).hostName();
    },

    async powerOnVm(args: { plan: VSpherePlan; vmRef: string }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      await client.vm(args.vmRef).powerOn();
    },

    async attachToProxy(args: { plan: VSpherePlan; diskFile: string; diskIndex?: number }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      const proxy = await proxyVm(client, args.plan);
      // Reconfigurations of one proxy VM are serialized: parallel disks would race for a SCSI unit.
      await proxyLocks.run(args.plan.proxyVmName ?? '', async () => {
        const attached = await proxy.attachedDiskFiles();
        if (attached.includes(args.diskFile)) return;
        const disk = args.plan.disks.find((d) => d.diskIndex === args.diskIndex) ?? args.plan.disks[0];
        await proxy.attachDisk(args.diskFile, { capacityBytes: disk?.capacityBytes ?? 0 });
      });
    },

    async detachFromProxy(args: { plan: VSpherePlan; diskFiles: string[] }): Promise<void> {
      if (!args.plan.proxyVmName) return;
      const client = await sessions.get(args.plan.profile);
      const dc = await client.datacenter(args.plan.datacenter);
      const proxy = await client.findVmByName(dc, args.plan.proxyVmName);
      if (!proxy) return;
      await proxyLocks.run(args.plan.proxyVmName, async () => {
        for (const f of args.diskFiles) await proxy.detachDisk(f);
      });
    },

    /**
     * Compensation: removes the half-restored VM (found by restore id and the planned name, as createVm
     * adopts it) and unmaps its disks from the proxy. A VM of that name without our id is never touched.
     */
    async destroyRestoredVm(args: { plan: VSpherePlan }): Promise<void> {
      const client = await sessions.get(args.plan.profile);
      const dc = await client.datacenter(args.plan.datacenter);
      const vms = (await client.findVmsByExtraConfig(dc, RESTORE_ID_KEY, args.plan.restoreId)).filter((vm) => vm.name === args.plan.vmName);
      const proxy = args.plan.proxyVmName ? await client.findVmByName(dc, args.plan.proxyVmName) : null;
      for (const vm of vms) {
        const cfg = await vm.config();
        if (proxy) for (const d of cfg.disks) await proxy.detachDisk(d.fileName);
        await vm.destroy();
      }
    },

    /** Streams one disk from the repository to the datastore; resumes from the last heartbeat. */
    async writeDisk(args: {
      plan: VSpherePlan;
      vmRef: string;
      diskIndex: number;
      diskFile: string;
      transport: TransportMode;
    }): Promise<DiskWriteResult> {
      const { plan, diskIndex, diskFile, transport } = args;
      const ctx = Context.current();
      const started = Date.now();
      const disk = plan.disks.find((d) => d.diskIndex === diskIndex);
      if (!disk) invalid(`disk ${diskIndex} is not in the plan`);
      const rp = await loadRestorePoint(plan.restorePointId);
      const proxy = proxyByName(plan.proxy);
      const flatPath = flatFileName(diskFile);
      const prev = ctx.info.heartbeatDetails as DiskCheckpoint | undefined;
      const signal = ctx.cancellationSignal;
      const throttle = plan.throttleMBps > 0 ? plan.throttleMBps * 1_000_000 : 0;
      const result = (resumedFromOffset: number, bytesWritten: number, bytesSkippedZero: number): DiskWriteResult => ({
        diskIndex,
        transport,
        bytesWritten,
        bytesSkippedZero,
        datastorePath: diskFile,
        flatPath,
        resumedFromOffset,
        seconds: (Date.now() - started) / 1000,
      });

      if (transport === 'nbd') {
        // The datastore file API replaces the whole file per PUT, so a retry starts from offset 0.
        const client = await sessions.get(plan.profile);
        const { datastore, path: rel } = parseDatastorePath(flatPath);
        let sent = 0;
        const limiter = new ByteRateLimiter(throttle);
        const zero = Buffer.alloc(rp.blockSize);
        const reporter = new DiskProgressReporter({ diskIndex, bytesTotal: disk.capacityBytes, transport });
        const beat = setInterval(() => {
          const bytesPerSecond = Math.round(reporter.update(sent));
          ctx.heartbeat({ diskIndex, offset: 0, bytes: sent, transport, bytesPerSecond } satisfies DiskCheckpoint);
        }, 1000);
        try {
          async function* body() {
            for await (const b of readDiskBlocks(config.repository.path, rp, diskIndex, {
              concurrency: config.restore.readConcurrency,
              signal,
            })) {
              const data = b.data ?? zero.subarray(0, b.length);
              await limiter.take(b.length, signal);
              sent += b.length;
              restoredBytes.inc({ target: 'vsphere', transport }, b.length);
              yield data;
            }
          }
          await uploadDatastoreFile(client, {
            datacenter: plan.datacenter,
            datastore,
            path: rel,
            size: disk.capacityBytes,
            body: body(),
            signal,
          });
        } finally {
          clearInterval(beat);
        }
        return result(0, sent, 0);
      }

      const target = localTargetPath(plan, proxy, transport, flatPath);
      if (transport === 'hotadd') {
        const client = await sessions.get(plan.profile);
        const attached = await (await proxyVm(client, plan)).attachedDiskFiles();
        if (!attached.includes(diskFile)) {
          throw new RestoreError(
            FailureType.TransportUnavailable,
            `hotadd: disk ${diskFile} is not attached to proxy VM '${plan.proxyVmName}'`,
          );
        }
      }
      if (!existsSync(target)) {
        throw new RestoreError(
          FailureType.TransportUnavailable,
          `${transport}: the disk's flat extent ${target} is not visible to proxy '${proxy.name}'`,
        );
      }
      const resumeFrom = prev && prev.transport === transport ? prev.offset : 0;
      let last: DiskCheckpoint = { diskIndex, offset: resumeFrom, bytes: prev?.bytes ?? 0, transport };
      const reporter = new DiskProgressReporter({ diskIndex, bytesTotal: disk.capacityBytes, transport });
      const beat = setInterval(() => {
        last.bytesPerSecond = Math.round(reporter.update(last.offset));
        ctx.heartbeat(last);
      }, 1000);
      try {
        const progress = await writeDiskToFile({
          targetPath: target,
          capacityBytes: disk.capacityBytes,
          blocks: countedBlocks(
            readDiskBlocks(config.repository.path, rp, diskIndex, {
              fromOffset: resumeFrom,
              concurrency: config.restore.readConcurrency,
              signal,
            }),
            (n) => restoredBytes.inc({ target: 'vsphere', transport }, n),
          ),
          checkpointBytes: config.restore.checkpointBytes,
          throttleBytesPerSecond: throttle,
          // A freshly created virtual disk reads as zeros, so zero blocks are left as holes.
          targetIsZeroed: true,
          signal,
          onCheckpoint: (p) => {
            last = {
              diskIndex,
              offset: p.checkpointOffset,
              bytes: (prev?.bytes ?? 0) + p.bytesWritten,
              transport,
              bytesPerSecond: Math.round(reporter.update(p.checkpointOffset)),
            };
            ctx.heartbeat(last);
          },
        });
        return result(resumeFrom, progress.bytesWritten, progress.bytesSkippedZero);
      } finally {
        clearInterval(beat);
      }
    },
  };
}

export type VSphereActivities = ReturnType<typeof createVSphereActivities>;

export function createMappedVSphereActivities(deps: VSphereDeps): VSphereActivities {
  return withFailureMapping(createVSphereActivities(deps));
}
