import * as fs from 'node:fs/promises';
import { Context } from '@temporalio/activity';
import type { AppConfig } from '../config';
import { FailureType, RestoreError } from '../domain/errors';
import type { GuestOsFamily, VmConfig, VmDisk } from '../domain/vm';
import type {
  ImportDiskCheckpoint,
  ImportDiskPlan,
  ImportDiskResult,
  VSphereImportPlan,
  VSphereImportRequest,
  VSphereImportResult,
  VSphereImportSnapshot,
} from '../domain/vsphere-import';
import { DEFAULT_BLOCK_SIZE, FORMAT_VERSION, isRestorePointId, restorePointPath, type RestorePoint } from '../repository/format';
import { getRestorePoint } from '../repository';
import { loadAllRestorePoints, saveRestorePoint } from '../repository/restore-points';
import { StagedDisk, blocksOf, readStagedDisk, recordStagingOwner, removeStaging } from '../repository/staged-disk';
import { downloadDatastoreFile, flatFileName, parseDatastorePath, VSphereNotFoundError, type VSphereClient } from '../vsphere';
import { diskInfo, isDisk } from '../vsphere/devices';
import { VSphereFaultError, arrayOf, bool, list, num, obj, refArg, str, type MoRef, type VimObject } from '../vsphere/soap';
import { withFailureMapping } from './failures';
import type { VSphereSessions } from './vsphere/sessions';

/** Where a restore point taken from vCenter came from; the next import compares its change ids. */
export interface VSphereSource {
  kind: 'vsphere';
  vcenter: string;
  vmRef: string;
  /** Per disk index: the snapshot's CBT change id, when the endpoint gave one. */
  changeIds: Record<string, string>;
}

export type ImportedRestorePoint = RestorePoint & { source?: VSphereSource };

export interface VSphereImportDeps {
  config: AppConfig;
  sessions: VSphereSessions;
}

function invalid(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, message);
}

function guestFamily(guestId: string): GuestOsFamily {
  return /^win/i.test(guestId) ? 'windows' : 'linux';
}

/** Disks in controller/unit order: the boot disk first, as a restore creates them. */
function orderedDisks(devices: VimObject[]): VimObject[] {
  return devices
    .filter(isDisk)
    .slice()
    .sort((a, b) => num(a.controllerKey) - num(b.controllerKey) || num(a.unitNumber) - num(b.unitNumber));
}

/** Walks QueryChangedDiskAreas from offset 0 to the capacity; the areas changed since `changeId`. */
async function changedAreas(
  client: VSphereClient,
  vm: MoRef,
  snapshot: MoRef,
  deviceKey: number,
  capacityBytes: number,
  changeId: string,
): Promise<Array<{ start: number; length: number }>> {
  const areas: Array<{ start: number; length: number }> = [];
  let offset = 0;
  while (offset < capacityBytes) {
    const info = obj(
      await client.call('QueryChangedDiskAreas', {
        _this: refArg(vm),
        snapshot: refArg(snapshot),
        deviceKey: String(deviceKey),
        startOffset: String(offset),
        changeId,
      }),
    );
    for (const a of arrayOf(info.changedArea).map(obj)) areas.push({ start: num(a.start), length: num(a.length) });
    const next = num(info.startOffset) + num(info.length);
    if (!(next > offset)) throw new VSphereFaultError('InvalidResponse', `QueryChangedDiskAreas made no progress at offset ${offset}`);
    offset = next;
  }
  return areas;
}

/** Block indexes touched by any of the areas. */
export function changedBlocks(areas: Array<{ start: number; length: number }>, blockSize: number, blockTotal: number): Set<number> {
  const out = new Set<number>();
  for (const a of areas) {
    if (a.length <= 0) continue;
    const first = Math.floor(a.start / blockSize);
    const last = Math.min(blockTotal - 1, Math.floor((a.start + a.length - 1) / blockSize));
    for (let b = first; b <= last; b++) out.add(b);
  }
  return out;
}

/** Prefix of the snapshot an import takes (`vmrestore-import-<import id>`). */
export const IMPORT_SNAPSHOT_PREFIX = 'vmrestore-import-';

export function importSnapshotDescription(workflowId: string): string {
  return `restore point being taken by vmrestore (workflow ${workflowId})`;
}

/** The workflow an import snapshot belongs to: named in its description, else its import id (the default workflow id). */
export function importSnapshotWorkflowId(snapshotName: string, description: string): string | null {
  if (!snapshotName.startsWith(IMPORT_SNAPSHOT_PREFIX)) return null;
  const named = /\(workflow (.+)\)$/.exec(description);
  return named ? named[1] : snapshotName.slice(IMPORT_SNAPSHOT_PREFIX.length);
}

export function createVSphereImportActivities(deps: VSphereImportDeps) {
  const { config, sessions } = deps;
  const repo = config.repository.path;

  return {
    /** Finds the VM and the parent restore point; nothing is created yet. */
    async prepareVSphereImport(req: VSphereImportRequest & { importId: string; restorePointId: string }): Promise<VSphereImportPlan> {
      if (typeof req.vmName !== 'string' || req.vmName.trim() === '') invalid('vmName is empty: name the VM to import');
      if (!isRestorePointId(req.restorePointId)) invalid(`restorePointId '${req.restorePointId}' is not a restore point id`);
      const profile = sessions.profileName(req.profile);
      const client = await sessions.get(profile);
      const dc = await client.datacenter(req.datacenter ?? config.vsphere.profiles[profile].datacenter);
      const vm = await client.findVmByName(dc, req.vmName);
      if (!vm) throw new RestoreError(FailureType.NotFound, `VM '${req.vmName}' not found in datacenter '${dc.name}' (${client.url.host})`);
      const parent = (await loadAllRestorePoints(repo)).find((rp) => rp.vm.name === req.vmName && rp.id !== req.restorePointId) ?? null;
      return {
        importId: req.importId,
        restorePointId: req.restorePointId,
        profile,
        datacenter: dc.name,
        vmRef: vm.ref,
        vmName: req.vmName,
        snapshotName: `${IMPORT_SNAPSHOT_PREFIX}${req.importId}`,
        parentId: parent?.id ?? null,
        blockSize: parent?.blockSize ?? DEFAULT_BLOCK_SIZE,
      };
    },

    /**
     * Takes the snapshot (a retry finds the one it took) and reads the VM's config as the snapshot holds
     * it: disks and their backings at that point in time, CPU, memory, firmware and NICs.
     */
    async createImportSnapshot(plan: VSphereImportPlan): Promise<VSphereImportSnapshot> {
      const client = await sessions.get(plan.profile);
      const vm = client.vm(plan.vmRef);
      // The description names the workflow, so a sweep finds whether the import that took it is still alive.
      const workflowId = Context.current().info.workflowExecution?.workflowId ?? plan.importId;
      const snap = await vm.createSnapshot(plan.snapshotName, importSnapshotDescription(workflowId));
      const vmCfg = await vm.config();
      const snapProps = await client.getProperties(snap.ref, ['config']);
      const snapCfg = obj(snapProps.config);
      const hardware = obj(snapCfg.hardware);
      const disksRaw = orderedDisks(list(hardware.device).map(obj));
      if (disksRaw.length === 0) invalid(`VM '${plan.vmName}' has no disks to import`);
      const parent = plan.parentId ? ((await getRestorePoint(repo, plan.parentId)) as ImportedRestorePoint) : null;
      const changeTrackingEnabled = bool(snapCfg.changeTrackingEnabled);

      const disks: ImportDiskPlan[] = [];
      const vmDisks: VmDisk[] = [];
      disksRaw.forEach((raw, diskIndex) => {
        const d = diskInfo(raw);
        const backing = obj(raw.backing);
        const parentBacking = obj(backing.parent);
        if (str(parentBacking.fileName)) {
          invalid(
            `VM '${plan.vmName}' disk ${diskIndex} (${d.label}) is a delta disk of '${str(parentBacking.fileName)}': ` +
              `it had snapshots before this import; remove or consolidate them first (the datastore file API reads flat extents only)`,
          );
        }
        if (!d.fileName || !/\.vmdk$/i.test(d.fileName)) invalid(`VM '${plan.vmName}' disk ${diskIndex} has no VMDK backing file`);
        if (d.capacityBytes <= 0 || d.capacityBytes % 512 !== 0) {
          invalid(`VM '${plan.vmName}' disk ${diskIndex} reports capacity ${d.capacityBytes} bytes`);
        }
        const changeId = str(backing.changeId) || undefined;
        disks.push({
          diskIndex,
          label: d.label,
          capacityBytes: d.capacityBytes,
          deviceKey: d.key,
          descriptor: d.fileName,
          flatFile: flatFileName(d.fileName),
          changeId,
          parentChangeId: parent?.source?.changeIds?.[String(diskIndex)],
        });
        vmDisks.push({
          index: diskIndex,
          label: d.label,
          capacityBytes: d.capacityBytes,
          provisioning: d.thinProvisioned ? 'thin' : 'thick',
        });
      });
      const vmConfig: VmConfig = {
        name: plan.vmName,
        guestOs: guestFamily(str(snapCfg.guestId) || vmCfg.guestId),
        firmware: str(snapCfg.firmware) === 'efi' ? 'efi' : 'bios',
        cpus: num(hardware.numCPU) || vmCfg.cpus,
        memoryMiB: num(hardware.memoryMB) || vmCfg.memoryMiB,
        // The VM's own view names distributed port groups; NICs do not change with a snapshot.
        nics: vmCfg.nics.map((n) => ({ network: n.network, macAddress: n.macAddress || undefined })),
        disks: vmDisks,
      };
      return { snapshotRef: snap.ref.value, vm: vmConfig, changeTrackingEnabled, disks };
    },

    /**
     * Reads one disk of the snapshot through the datastore file API into the repository, heartbeating
     * its progress and staging its block map every checkpoint, so a retry resumes at the last one. With
     * changed-block tracking (a change id now and in the parent) only the changed areas are fetched;
     * otherwise every block is read and compared with the parent's by digest.
     */
    async importVSphereDisk(args: {
      plan: VSphereImportPlan;
      snapshot: VSphereImportSnapshot;
      diskIndex: number;
    }): Promise<ImportDiskResult> {
      const { plan, snapshot, diskIndex } = args;
      const disk = snapshot.disks.find((d) => d.diskIndex === diskIndex);
      if (!disk) invalid(`disk ${diskIndex} is not in the import of VM '${plan.vmName}'`);
      const ctx = Context.current();
      const signal = ctx.cancellationSignal;
      const started = Date.now();
      const parentRp = plan.parentId ? await getRestorePoint(repo, plan.parentId) : null;
      const parentDisk = parentRp?.disks.find((d) => d.index === diskIndex && d.capacityBytes === disk.capacityBytes);
      const staged = await StagedDisk.open({
        repoDir: repo,
        importId: plan.importId,
        diskIndex,
        capacityBytes: disk.capacityBytes,
        blockSize: plan.blockSize,
        parentBlocks: parentDisk?.blocks ?? null,
      });
      if (staged.state.done && staged.state.result) return staged.state.result as ImportDiskResult;
      await recordStagingOwner(repo, { importId: plan.importId, workflowId: ctx.info.workflowExecution?.workflowId ?? plan.importId });

      const client = await sessions.get(plan.profile);
      const { datastore, path: rel } = parseDatastorePath(disk.flatFile);
      const where = `VM '${plan.vmName}' disk ${diskIndex} (${disk.flatFile})`;
      const resumedFrom = staged.state.offset;
      let readTo = resumedFrom;
      const beat = () =>
        ctx.heartbeat({
          diskIndex,
          offset: readTo,
          bytes: staged.state.stats.bytesRead,
          stagedOffset: staged.state.offset,
        } satisfies ImportDiskCheckpoint);
      const timer = setInterval(beat, 1000);
      const checkpointBytes = Math.max(config.restore.checkpointBytes, plan.blockSize);
      let lastCheckpoint = resumedFrom;

      /** Reads [from, to) (block aligned, `to` at most the capacity) and stages its blocks. */
      const readRange = async (from: number, to: number, checkSize: boolean) => {
        const dl = await downloadDatastoreFile(client, {
          datacenter: plan.datacenter,
          datastore,
          path: rel,
          range: { offset: from, length: to - from },
          signal,
        });
        if (checkSize && dl.totalSize !== undefined && dl.totalSize !== disk.capacityBytes) {
          dl.body.destroy();
          invalid(
            `${where}: the flat extent holds ${dl.totalSize} bytes, but the disk's capacity is ${disk.capacityBytes}; it cannot be read as a flat disk`,
          );
        }
        for await (const b of blocksOf(dl.body as AsyncIterable<Buffer>, from, to, plan.blockSize, where)) {
          signal.throwIfAborted();
          await staged.take(b.blockIndex, b.data);
          readTo = b.blockIndex * plan.blockSize + b.data.length;
          if (readTo - lastCheckpoint >= checkpointBytes) {
            await staged.checkpoint(readTo);
            lastCheckpoint = readTo;
            beat();
          }
        }
      };

      try {
        let changeDetection: ImportDiskResult['changeDetection'] = staged.hasParent ? 'digest' : 'full';
        let cbtUnavailable: string | undefined;
        let changed: Set<number> | null = null;
        if (!staged.hasParent) cbtUnavailable = 'no earlier restore point of this disk to compare with';
        else if (!snapshot.changeTrackingEnabled)
          cbtUnavailable = 'changed-block tracking is off for this VM (changeTrackingEnabled false)';
        else if (!disk.changeId) cbtUnavailable = 'the snapshot reports no change id for this disk';
        else if (!disk.parentChangeId) cbtUnavailable = 'the earlier restore point recorded no change id for this disk';
        else {
          try {
            const areas = await changedAreas(
              client,
              { type: 'VirtualMachine', value: plan.vmRef },
              { type: 'VirtualMachineSnapshot', value: snapshot.snapshotRef },
              disk.deviceKey,
              disk.capacityBytes,
              disk.parentChangeId,
            );
            changed = changedBlocks(areas, plan.blockSize, staged.state.blocks.length);
            changeDetection = 'cbt';
          } catch (err) {
            if (!(err instanceof VSphereFaultError) || err.fault === 'TransportError') throw err;
            cbtUnavailable = `QueryChangedDiskAreas failed: ${err.message}`;
          }
        }

        const blockTotal = staged.state.blocks.length;
        const firstBlock = Math.floor(resumedFrom / plan.blockSize);
        if (changed === null) {
          if (resumedFrom < disk.capacityBytes) await readRange(resumedFrom, disk.capacityBytes, true);
        } else {
          // Runs of changed blocks are fetched with one ranged GET each; the rest is the parent's.
          for (let b = firstBlock; b < blockTotal; ) {
            if (!changed.has(b)) {
              staged.keep(b);
              readTo = Math.min(disk.capacityBytes, (b + 1) * plan.blockSize);
              b++;
              continue;
            }
            let end = b;
            while (end < blockTotal && changed.has(end)) end++;
            await readRange(b * plan.blockSize, Math.min(disk.capacityBytes, end * plan.blockSize), false);
            b = end;
          }
        }
        await staged.flush();
        const s = staged.state.stats;
        const result: ImportDiskResult = {
          diskIndex,
          changeDetection,
          bytesRead: s.bytesRead,
          chunksWritten: s.chunksWritten,
          bytesWritten: s.bytesWritten,
          chunksReused: s.chunksReused,
          zeroBlocks: s.zeroBlocks,
          blocksSkippedByCbt: s.blocksKept,
          cbtUnavailable,
          resumedFromOffset: resumedFrom,
          seconds: (Date.now() - started) / 1000,
        };
        await staged.checkpoint(disk.capacityBytes, true, result);
        beat();
        return result;
      } finally {
        clearInterval(timer);
      }
    },

    /** Writes the restore point from the staged block maps; a retry after it was written returns it. */
    async saveImportedRestorePoint(args: {
      plan: VSphereImportPlan;
      snapshot: VSphereImportSnapshot;
    }): Promise<Pick<VSphereImportResult, 'restorePointId' | 'parentId'>> {
      const { plan, snapshot } = args;
      const exists = await fs.access(restorePointPath(repo, plan.restorePointId)).then(
        () => true,
        () => false,
      );
      if (!exists) {
        const disks = [];
        for (const d of snapshot.disks) {
          const staged = await readStagedDisk(repo, plan.importId, d.diskIndex);
          if (!staged?.done) {
            throw new RestoreError(FailureType.RepositoryCorrupt, `disk ${d.diskIndex} of import ${plan.importId} was not read completely`);
          }
          disks.push({ index: d.diskIndex, capacityBytes: d.capacityBytes, blocks: staged.blocks });
        }
        const client = await sessions.get(plan.profile);
        const changeIds: Record<string, string> = {};
        for (const d of snapshot.disks) if (d.changeId) changeIds[String(d.diskIndex)] = d.changeId;
        const rp: ImportedRestorePoint = {
          formatVersion: FORMAT_VERSION,
          id: plan.restorePointId,
          createdAt: new Date().toISOString(),
          parentId: plan.parentId,
          vm: snapshot.vm,
          blockSize: plan.blockSize,
          disks,
          source: { kind: 'vsphere', vcenter: client.url.host, vmRef: plan.vmRef, changeIds },
        };
        await saveRestorePoint(repo, rp);
      }
      await removeStaging(repo, plan.importId);
      return { restorePointId: plan.restorePointId, parentId: plan.parentId };
    },

    /** Removes the import's snapshot; also the compensation after a failure. False when there was none. */
    async removeImportSnapshot(args: { plan: VSphereImportPlan }): Promise<boolean> {
      const client = await sessions.get(args.plan.profile);
      try {
        return await client.vm(args.plan.vmRef).removeSnapshot(args.plan.snapshotName, { consolidate: true });
      } catch (err) {
        if (err instanceof VSphereNotFoundError) return false;
        throw err;
      }
    },

    /** Compensation: the staged block maps of an import that will not be saved. */
    async discardImportStaging(args: { plan: VSphereImportPlan }): Promise<void> {
      await removeStaging(repo, args.plan.importId);
    },
  };
}

export type VSphereImportActivities = ReturnType<typeof createVSphereImportActivities>;

export function createMappedVSphereImportActivities(deps: VSphereImportDeps): VSphereImportActivities {
  return withFailureMapping(createVSphereImportActivities(deps));
}
