import { FailureType, RestoreError } from '../../domain/errors';
import { GiB } from '../../domain/units';
import { validateVSphereRestoreRequest } from '../../domain/validation';
import {
  DISK_FORMATS,
  TRANSPORT_REQUESTS,
  type DiskPlan,
  type ProxyCandidate,
  type VSpherePlan,
  type VSphereRestoreRequest,
} from '../../domain/vsphere';
import { DEFAULT_PROXY_MAX_TASKS } from '../../config';
import { diskLayout } from '../../repository';
import { TRANSPORT_ORDER, TRANSPORTS } from '../../transport';
import { SanHost } from '../../transport/san-host';
import { invalid, RESTORE_ID_KEY, type VSphereContext } from './context';

function fmtGiB(bytes: number): string {
  return `${(bytes / GiB).toFixed(2)} GiB`;
}

/** Seed step 1, initialization: every check and decision made before anything is created. */
export function createInitializeActivities(ctx: VSphereContext) {
  const { config, sessions, loadRestorePoint, proxyByName } = ctx;
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
      const usable: ProxyCandidate[] = [];
      const reasons: string[] = [];
      // Direct SAN needs the host's block map of the flat extent; asked once, and only when a proxy could use it.
      const sanCandidate = wanted.includes('direct-san') && candidates.some((p) => !TRANSPORTS['direct-san'].cannot(p, ds.name, anyThin));
      const noSanService = sanCandidate ? await SanHost.unavailable(client) : undefined;
      for (const proxy of candidates) {
        const modes = wanted.filter((m) => {
          const why = (m === 'direct-san' ? noSanService : undefined) ?? TRANSPORTS[m].cannot(proxy, ds.name, anyThin);
          if (why) reasons.push(why);
          return !why;
        });
        if (modes.length > 0)
          usable.push({ name: proxy.name, vmName: proxy.vmName, transports: modes, maxTasks: proxy.maxTasks ?? DEFAULT_PROXY_MAX_TASKS });
      }
      // Best transport first; among equals, the configured order. Each disk then takes a slot on the best
      // proxy that has a live worker and a free slot (see chooseProxy).
      const rank = (c: ProxyCandidate) => TRANSPORT_ORDER.indexOf(c.transports[0]);
      usable.sort((a, b) => rank(a) - rank(b));
      const best = usable[0];
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
      for (const d of disks) d.transports = best.transports;

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
        proxy: best.name,
        proxyVmName: best.vmName,
        proxies: usable,
        proxyWaitSeconds: req.proxyWaitSeconds ?? config.restore.proxyWaitSeconds,
        disks,
        requiredBytes,
        freeBytes: ds.freeSpaceBytes,
        throttleMBps: req.throttleMBps ?? 0,
        diskConcurrency: req.diskConcurrency ?? config.restore.diskConcurrency,
        powerOn: req.powerOn ?? false,
        keepOnFailure: req.keepOnFailure ?? false,
      };
    },
  };
}
