import * as fs from 'node:fs/promises';
import type { Client } from '@temporalio/client';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import type { AppConfig, AzureConfig } from '../config';
import type { LeaseOwner, LeaseTarget } from '../domain/lease';
import type { SweepItem, SweepItemKind, SweepReport, SweepRequest } from '../domain/sweep';
import { VHD_RESTORE_ID_METADATA_KEY } from '../azure/pageblob';
import { armClientsFor } from '../azure/credential';
import type { ArmClients } from '../azure/arm-clients';
import { listStaging } from '../repository/staged-disk';
import { list, obj, ref, str, type VimObject } from '../vsphere/soap';
import type { VSphereSessions } from './vsphere/sessions';
import { RESTORE_ID_KEY } from './vsphere';
import { importSnapshotWorkflowId } from './vsphere-import';

/** The tag every Azure resource a restore creates carries. */
export const RESTORE_TAG = 'vmrestoreRestoreId';

export interface SweepDeps {
  config: AppConfig;
  client: Client;
  sessions: VSphereSessions;
}

/** What became of a restore, as far as the sweeper is concerned. */
interface RestoreFate {
  /** true: closed without completing (or gone), so what it left behind is removed. */
  sweep: boolean;
  state: string;
}

function isNotFound(err: unknown): boolean {
  const e = err as { statusCode?: number; code?: string; name?: string };
  return e?.statusCode === 404 || e?.code === 'ResourceNotFound' || e?.code === 'NotFound' || e?.name === 'WorkflowNotFoundError';
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** `/subscriptions/s/resourceGroups/RG/providers/P/T/NAME` → { resourceGroup, name }. */
function parseArmId(id: string): { resourceGroup: string; name: string } | undefined {
  const m = /\/resourceGroups\/([^/]+)\/providers\/[^/]+\/[^/]+\/([^/]+)$/i.exec(id);
  return m ? { resourceGroup: m[1], name: m[2] } : undefined;
}

export function createSweepActivities(deps: SweepDeps) {
  const { config, client } = deps;
  let arm: ArmClients | undefined;
  const clients = (a: AzureConfig): ArmClients =>
    (arm ??= armClientsFor(a, { maxRetries: 6, retryDelayInMs: 200, maxRetryDelayInMs: 5000 }));
  let container: ContainerClient | undefined;
  const blobs = (a: AzureConfig): ContainerClient | undefined => {
    if (!container) {
      const cs = a.blobConnectionString ?? (a.blobConnectionStringEnv ? process.env[a.blobConnectionStringEnv] : undefined);
      if (!cs) return undefined;
      container = BlobServiceClient.fromConnectionString(cs).getContainerClient(a.container);
    }
    return container;
  };

  /** Status of one workflow execution; undefined when it does not exist (any more). */
  const executionStatus = async (workflowId: string, runId?: string): Promise<string | undefined> => {
    try {
      return (await client.workflow.getHandle(workflowId, runId).describe()).status.name;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  };

  /**
   * A restore's fate from its workflow executions: found by the `RestoreId` search attribute, or by the
   * restore id as workflow id (the default). Running, completed, or closed with `keepOnFailure` keeps
   * what it made; any other close sweeps it. No workflow at all sweeps it only with `includeOrphans`: a
   * completed restore's history also disappears once the namespace's retention has passed, and another
   * installation on another namespace may share the resource group.
   */
  const fateOf = async (restoreId: string, includeOrphans: boolean): Promise<RestoreFate> => {
    const runs: Array<{ workflowId: string; runId: string; status: string; startTime: number }> = [];
    try {
      const query = `RestoreId = "${restoreId.replace(/["\\]/g, '\\$&')}"`;
      for await (const w of client.workflow.list({ query })) {
        runs.push({ workflowId: w.workflowId, runId: w.runId, status: w.status.name, startTime: w.startTime.getTime() });
      }
    } catch {
      // A server without the RestoreId attribute: the workflow id lookup below still works.
    }
    if (runs.length === 0) {
      try {
        const d = await client.workflow.getHandle(restoreId).describe();
        runs.push({ workflowId: d.workflowId, runId: d.runId, status: d.status.name, startTime: d.startTime.getTime() });
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    }
    if (runs.length === 0) return { sweep: includeOrphans, state: 'no workflow' };
    if (runs.some((r) => r.status === 'RUNNING')) return { sweep: false, state: 'RUNNING' };
    if (runs.some((r) => r.status === 'COMPLETED')) return { sweep: false, state: 'COMPLETED' };
    const last = runs.sort((x, y) => y.startTime - x.startTime)[0];
    if (last.status === 'FAILED' || last.status === 'CANCELLED') {
      const memo = (await client.workflow.getHandle(last.workflowId, last.runId).describe()).memo ?? {};
      if (memo.keepOnFailure === true) return { sweep: false, state: `${last.status} (keepOnFailure)` };
    }
    return { sweep: true, state: last.status };
  };

  /**
   * An import's fate from its workflow (the latest run of that id): running or completed keeps its
   * snapshot and staging; any other close sweeps them; no workflow at all only with `includeOrphans`.
   */
  const importFateOf = async (workflowId: string, includeOrphans: boolean): Promise<RestoreFate> => {
    const status = await executionStatus(workflowId);
    if (status === undefined) return { sweep: includeOrphans, state: 'no workflow' };
    return { sweep: status !== 'RUNNING' && status !== 'COMPLETED', state: status };
  };

  return {
    /**
     * The lease's check on its holders: returns the holders whose workflow execution has closed (or no
     * longer exists). Disks such a holder left attached to a helper appliance (managed disks tagged with
     * its restore id, which is the holder name) are detached first; a holder whose detach fails is kept
     * for the next check.
     */
    async reapLeaseHolders(args: { target: LeaseTarget; holders: Array<{ holder: string; owner: LeaseOwner }> }): Promise<string[]> {
      const closed: string[] = [];
      for (const { holder, owner } of args.holders) {
        const status = await executionStatus(owner.workflowId, owner.runId);
        if (status === 'RUNNING') continue;
        if (args.target.kind === 'helper' && config.azure) {
          try {
            await detachTagged(config.azure, args.target.resourceGroup, args.target.vmName, (id) => id === holder);
          } catch {
            continue;
          }
        }
        closed.push(holder);
      }
      return closed;
    },

    /** Finds what closed restores left behind in vSphere and Azure and, unless `dryRun`, removes it. */
    async sweepLeftovers(req: SweepRequest = {}): Promise<SweepReport> {
      const started = Date.now();
      const dryRun = req.dryRun ?? false;
      const report: SweepReport = { dryRun, items: [], kept: 0, errors: [], seconds: 0 };
      const fates = new Map<string, Promise<RestoreFate>>();
      const fate = (id: string): Promise<RestoreFate> => {
        let f = fates.get(id);
        if (!f) fates.set(id, (f = fateOf(id, req.includeOrphans ?? false)));
        return f;
      };
      /** Records one item and removes it (unless a dry run); an error is reported, not thrown. */
      const remove = async (kind: SweepItemKind, name: string, restoreId: string, state: string, fn: () => Promise<unknown>) => {
        const item: SweepItem = { kind, name, restoreId, restoreState: state, action: dryRun ? 'would remove' : 'removed' };
        report.items.push(item);
        if (dryRun) return;
        try {
          await fn();
        } catch (err) {
          item.action = 'failed';
          item.error = errText(err);
        }
      };

      const importFates = new Map<string, Promise<RestoreFate>>();
      const importFate = (workflowId: string): Promise<RestoreFate> => {
        let f = importFates.get(workflowId);
        if (!f) importFates.set(workflowId, (f = importFateOf(workflowId, req.includeOrphans ?? false)));
        return f;
      };
      await sweepVSphere(report, fate, remove);
      await sweepImportSnapshots(report, importFate, remove);
      await sweepImportStaging(report, importFate, remove);
      if (config.azure) await sweepAzure(config.azure, report, fate, remove);
      report.seconds = (Date.now() - started) / 1000;
      return report;
    },
  };

  type Fate = (id: string) => Promise<RestoreFate>;
  type Remove = (kind: SweepItemKind, name: string, restoreId: string, state: string, fn: () => Promise<unknown>) => Promise<void>;

  /** Detaches from one VM the data disks whose managed disk carries a restore tag accepted by `match`. */
  async function detachTagged(
    a: AzureConfig,
    resourceGroup: string,
    vmName: string,
    match: (restoreId: string) => boolean | Promise<boolean>,
    onDisk?: (diskId: string, restoreId: string) => Promise<boolean>,
  ): Promise<number> {
    const { compute } = clients(a);
    const vm = await compute.virtualMachines.get(resourceGroup, vmName);
    const toDetach: string[] = [];
    for (const d of vm.storageProfile?.dataDisks ?? []) {
      const id = d.managedDisk?.id;
      const ref = id ? parseArmId(id) : undefined;
      if (!id || !ref) continue;
      let tag: string | undefined;
      try {
        tag = (await compute.disks.get(ref.resourceGroup, ref.name)).tags?.[RESTORE_TAG];
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
      if (tag === undefined || !(await match(tag))) continue;
      if (onDisk && !(await onDisk(id, tag))) continue;
      toDetach.push(id);
    }
    if (toDetach.length > 0) {
      await compute.virtualMachines.attachDetachDataDisks(resourceGroup, vmName, {
        dataDisksToDetach: toDetach.map((diskId) => ({ diskId })),
      });
    }
    return toDetach.length;
  }

  async function sweepVSphere(report: SweepReport, fate: Fate, remove: Remove): Promise<void> {
    for (const [profileName, profile] of Object.entries(config.vsphere.profiles)) {
      try {
        const vc = await deps.sessions.get(profileName);
        const dc = await vc.datacenter(profile.datacenter);
        const tagged = await vc.listVmsByExtraConfigKey(dc, RESTORE_ID_KEY);
        const doomed: Array<{ vm: (typeof tagged)[number]; state: string; diskFiles: string[] }> = [];
        for (const t of tagged) {
          if (!t.value) continue;
          const f = await fate(t.value);
          if (!f.sweep) {
            report.kept++;
            continue;
          }
          const cfg = await t.vm.config();
          doomed.push({ vm: t, state: f.state, diskFiles: cfg.disks.map((d) => d.fileName) });
        }
        if (doomed.length === 0) continue;
        // HotAdd attachments first: destroying the VM must not take a proxy's device with it, nor the
        // proxy keep a handle on a deleted disk.
        const proxies = config.proxies.map((p) => p.vmName).filter((n): n is string => !!n);
        for (const proxyName of [...new Set(proxies)]) {
          const proxy = await vc.findVmByName(dc, proxyName);
          if (!proxy) continue;
          const attached = new Set(await proxy.attachedDiskFiles());
          for (const d of doomed) {
            for (const file of d.diskFiles.filter((f) => attached.has(f))) {
              await remove('hotadd-attachment', `${proxyName}: ${file}`, d.vm.value, d.state, () => proxy.detachDisk(file));
            }
          }
        }
        for (const d of doomed) {
          for (const s of await d.vm.vm.snapshots()) {
            // Removed with the VM; listed so the report shows what the restore left.
            await remove('vsphere-snapshot', `${d.vm.name}: ${s.name}`, d.vm.value, d.state, async () => undefined);
          }
          await remove('vsphere-vm', d.vm.name, d.vm.value, d.state, async () => {
            // The tag is read again right before the destroy: only a VM of this restore goes.
            const cfg = await d.vm.vm.config();
            if (cfg.extraConfig[RESTORE_ID_KEY] !== d.vm.value)
              throw new Error(`VM '${d.vm.name}' no longer carries restore id ${d.vm.value}`);
            await d.vm.vm.destroy();
          });
        }
      } catch (err) {
        report.errors.push(`vSphere profile '${profileName}': ${errText(err)}`);
      }
    }
  }

  /** Snapshots that imports (`vmrestore-import-<id>`) took on source VMs and could not remove. */
  async function sweepImportSnapshots(report: SweepReport, fate: Fate, remove: Remove): Promise<void> {
    for (const [profileName, profile] of Object.entries(config.vsphere.profiles)) {
      try {
        const vc = await deps.sessions.get(profileName);
        const dc = await vc.datacenter(profile.datacenter);
        // One property collector call for every VM's snapshot tree, not one per VM.
        const vms = await vc.findObjects(dc.vmFolder, ['VirtualMachine'], [{ type: 'VirtualMachine', paths: ['name', 'snapshot'] }]);
        for (const o of vms) {
          const vmName = str(o.props.name);
          const found: Array<{ name: string; workflowId: string }> = [];
          const walk = (nodes: VimObject[]): void => {
            for (const n of nodes) {
              const workflowId = ref(n.snapshot) ? importSnapshotWorkflowId(str(n.name), str(n.description)) : null;
              if (workflowId) found.push({ name: str(n.name), workflowId });
              walk(list(n.childSnapshotList).map(obj));
            }
          };
          walk(list(obj(o.props.snapshot).rootSnapshotList).map(obj));
          for (const s of found) {
            const f = await fate(s.workflowId);
            if (!f.sweep) {
              report.kept++;
              continue;
            }
            await remove('import-snapshot', `${vmName}: ${s.name}`, s.workflowId, f.state, async () => {
              // Removed by name: a snapshot already gone (the import's own compensation won the race) is fine.
              await vc.vm(o.ref).removeSnapshot(s.name, { consolidate: true });
            });
          }
        }
      } catch (err) {
        report.errors.push(`vSphere profile '${profileName}' (import snapshots): ${errText(err)}`);
      }
    }
  }

  /** Staged block maps in the repository (`staging/<import id>/`) of imports that will never save them. */
  async function sweepImportStaging(report: SweepReport, fate: Fate, remove: Remove): Promise<void> {
    try {
      for (const s of await listStaging(config.repository.path)) {
        const workflowId = s.owner?.workflowId ?? s.name;
        const f = await fate(workflowId);
        if (!f.sweep) {
          report.kept++;
          continue;
        }
        await remove('import-staging', s.dir, workflowId, f.state, () => fs.rm(s.dir, { recursive: true, force: true }));
      }
    } catch (err) {
      report.errors.push(`repository ${config.repository.path} (import staging): ${errText(err)}`);
    }
  }

  async function sweepAzure(a: AzureConfig, report: SweepReport, fate: Fate, remove: Remove): Promise<void> {
    const { compute, network } = clients(a);
    const groups = new Set([
      a.resourceGroup,
      ...a.proxies.map((p) => p.resourceGroup),
      ...Object.values(a.helpers).map((h) => h.resourceGroup),
    ]);
    const doomedTag = async (tag: string | undefined): Promise<RestoreFate | undefined> => {
      if (!tag) return undefined;
      const f = await fate(tag);
      if (!f.sweep) {
        report.kept++;
        return undefined;
      }
      return f;
    };
    try {
      // Helper (and proxy) appliances: detach the disks of dead restores before those disks are deleted.
      const appliances = [
        ...Object.values(a.helpers).map((h) => ({ rg: h.resourceGroup, vm: h.vmName })),
        ...a.proxies.map((p) => ({ rg: p.resourceGroup, vm: p.vmName })),
      ];
      for (const ap of appliances) {
        try {
          const pending: Array<{ id: string; tag: string; state: string }> = [];
          await detachTagged(
            a,
            ap.rg,
            ap.vm,
            async (tag) => (await fate(tag)).sweep,
            async (id, tag) => {
              pending.push({ id, tag, state: (await fate(tag)).state });
              return !report.dryRun;
            },
          );
          for (const p of pending)
            await remove('helper-attachment', `${ap.vm}: ${parseArmId(p.id)?.name ?? p.id}`, p.tag, p.state, async () => undefined);
        } catch (err) {
          if (!isNotFound(err)) report.errors.push(`appliance '${ap.vm}': ${errText(err)}`);
        }
      }
      // In this order: a VM holds its NIC and disks, which ARM deletes only once it is gone.
      const kinds: Array<{
        kind: SweepItemKind;
        what: string;
        list: (rg: string) => AsyncIterable<{ name?: string; tags?: Record<string, string> }>;
        get: (rg: string, name: string) => Promise<{ tags?: Record<string, string> }>;
        del: (rg: string, name: string) => Promise<unknown>;
      }> = [
        {
          kind: 'azure-vm',
          what: 'VM',
          list: (rg) => compute.virtualMachines.list(rg),
          get: (rg, n) => compute.virtualMachines.get(rg, n),
          del: async (rg, n) => compute.virtualMachines.delete(rg, n),
        },
        {
          kind: 'azure-nic',
          what: 'network interface',
          list: (rg) => network.networkInterfaces.list(rg),
          get: (rg, n) => network.networkInterfaces.get(rg, n),
          del: async (rg, n) => network.networkInterfaces.delete(rg, n),
        },
        {
          kind: 'azure-disk',
          what: 'managed disk',
          list: (rg) => compute.disks.listByResourceGroup(rg),
          get: (rg, n) => compute.disks.get(rg, n),
          del: async (rg, n) => compute.disks.delete(rg, n),
        },
      ];
      for (const k of kinds) {
        for (const rg of groups) {
          for await (const r of k.list(rg)) {
            const tag = r.tags?.[RESTORE_TAG];
            const f = await doomedTag(tag);
            if (!f || !r.name) continue;
            const name = r.name;
            await remove(k.kind, `${rg}/${name}`, tag!, f.state, async () => {
              // The tag is read again right before the delete: only a resource of this restore goes.
              if ((await k.get(rg, name)).tags?.[RESTORE_TAG] !== tag)
                throw new Error(`${k.what} '${name}' no longer carries restore id ${tag}`);
              await k.del(rg, name);
            });
          }
        }
      }
    } catch (err) {
      report.errors.push(`Azure: ${errText(err)}`);
    }
    const c = blobs(a);
    if (!c) return;
    try {
      if (!(await c.exists())) return;
      for await (const b of c.listBlobsFlat({ includeMetadata: true })) {
        const stored = b.metadata?.[VHD_RESTORE_ID_METADATA_KEY];
        const tag = stored === undefined ? undefined : safeDecode(stored);
        const f = await doomedTag(tag);
        if (!f) continue;
        await remove('vhd-blob', b.name, tag!, f.state, async () => {
          const blob = c.getBlobClient(b.name);
          const props = await blob.getProperties();
          if (props.metadata?.[VHD_RESTORE_ID_METADATA_KEY] !== stored)
            throw new Error(`blob '${b.name}' no longer carries restore id ${tag}`);
          await blob.delete({ conditions: { ifMatch: props.etag } });
        });
      }
    } catch (err) {
      report.errors.push(`Blob container '${a.container}': ${errText(err)}`);
    }
  }
}

export type SweepActivities = ReturnType<typeof createSweepActivities>;

/** A URI-encoded metadata value, or the value itself when it is not valid encoding. */
function safeDecode(v: string): string {
  try {
    return decodeURIComponent(v);
  } catch {
    return v;
  }
}
