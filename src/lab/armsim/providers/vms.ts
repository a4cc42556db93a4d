/** Microsoft.Compute: managed disks and virtual machines, with the validation CRP applies. */
import type { PageBlobClient } from '@azure/storage-blob';
import { blobPathInAccount } from '../blobs';
import { checkPutPreconditions, methodNotAllowed, normLocation, unknownRoute, type Reply, type ReqCtx } from '../common';
import { agentProbeFor, type AgentCheck, type AgentProbe } from '../agent';
import { activeGrant, grantAccess, revokeAccess } from './disk-access';
import type { ArmSim } from '../engine';
import { ArmError, badRequest, invalidParameter, missingParameter, operationNotAllowed, resourceNotFound } from '../errors';
import { findVmSize, VM_SIZES, type VmSizeInfo } from '../sizes';
import {
  key,
  type DiskRec,
  type HyperVGeneration,
  type OperationRec,
  type OsType,
  type PowerState,
  type VmDiskRef,
  type VmNicRef,
  type VmRec,
} from '../state';
import {
  canonicalJson,
  checkResourceName,
  enumValue,
  hex,
  mergePatch,
  nowIso,
  objectAt,
  optArray,
  optBoolean,
  optNumber,
  optObject,
  optString,
  optTags,
  parseResourceId,
  resourceId,
  uuid,
  withoutKeys,
  type Json,
} from '../util';
import { renderNic } from './nics';
import { checkVhdBlobSize, checkVhdFooter, parseVhdFooter, type VhdProblem } from '../vhd';

const COMPUTE = 'Microsoft.Compute';
const GiB = 1024 ** 3;
const DISK_SKUS = [
  'Standard_LRS',
  'Premium_LRS',
  'StandardSSD_LRS',
  'UltraSSD_LRS',
  'Premium_ZRS',
  'StandardSSD_ZRS',
  'PremiumV2_LRS',
] as const;
const OS_TYPES = ['Windows', 'Linux'] as const;
const GENERATIONS = ['V1', 'V2'] as const;
const CACHING = ['None', 'ReadOnly', 'ReadWrite'] as const;
const DELETE_OPTIONS = ['Detach', 'Delete'] as const;
const DISK_CREATE_OPTIONS = [
  'Empty',
  'Attach',
  'FromImage',
  'Import',
  'Copy',
  'Restore',
  'Upload',
  'CopyStart',
  'ImportSecure',
  'UploadPreparedSecure',
  'CopyFromSanSnapshot',
] as const;
const LINUX_COMMANDS = ['RunShellScript', 'ifconfig'] as const;
const WINDOWS_COMMANDS = [
  'RunPowerShellScript',
  'ipconfig',
  'EnableAdminAccount',
  'EnableRemotePS',
  'ResetRDPCert',
  'SetRDPPort',
  'RDPSettings',
  'IPConfig',
] as const;
/** Properties the simulator computes; they are dropped from request bodies. */
const DISK_READONLY = [
  'provisioningState',
  'timeCreated',
  'diskSizeBytes',
  'uniqueId',
  'diskState',
  'shareInfo',
  'propertyUpdatesInProgress',
  'burstingEnabledTime',
  'LastOwnershipUpdateTime',
];
const DISK_MODELLED = ['osType', 'hyperVGeneration', 'creationData', 'diskSizeGB'];
const VM_READONLY = ['provisioningState', 'instanceView', 'vmId', 'timeCreated'];
const VM_MODELLED = ['hardwareProfile', 'storageProfile', 'networkProfile'];

// ---- disks ---------------------------------------------------------------------------------------

export async function disksRoute(sim: ArmSim, ctx: ReqCtx, rg: string, name: string | undefined, rest: string[]): Promise<Reply> {
  const target = sim.routeTarget(ctx, rg, name, COMPUTE, 'disks');
  if (target.list) return target.list;
  if (rest.length > 1 || name === undefined) throw unknownRoute(ctx);
  const { rgName, id, k } = target;
  const existing = sim.state.disks[k];
  if (rest.length === 1) {
    if (rest[0] !== 'begingetaccess' && rest[0] !== 'endgetaccess') throw unknownRoute(ctx);
    if (ctx.method !== 'POST') throw methodNotAllowed(ctx);
    if (!existing) throw resourceNotFound('Microsoft.Compute/disks', name, rgName);
    return rest[0] === 'begingetaccess' ? grantAccess(sim, ctx, existing) : revokeAccess(sim, ctx, existing);
  }
  switch (ctx.method) {
    case 'GET':
      if (!existing) throw resourceNotFound('Microsoft.Compute/disks', name, rgName);
      return { status: 200, body: renderDisk(sim, existing) };
    case 'PUT': {
      checkResourceName(name, 'disks');
      checkPutPreconditions(ctx, existing);
      const spec = parseDiskBody(objectAt(ctx.body, 'body'));
      if (existing) return updateDisk(sim, ctx, existing, spec);
      return createDisk(sim, ctx, id, rgName, name, spec);
    }
    case 'PATCH': {
      if (!existing) throw resourceNotFound('Microsoft.Compute/disks', name, rgName);
      const body = objectAt(ctx.body, 'body');
      const props = objectAt(body.properties, 'properties');
      const merged: DiskSpec = {
        location: existing.location,
        tags: body.tags !== undefined ? optTags(body.tags) : existing.tags,
        skuName: diskSku(optString(optObject(body.sku, 'sku')?.name, 'sku.name')) ?? existing.skuName,
        osType: enumValue(optString(props.osType, 'osType'), OS_TYPES) ?? existing.osType,
        hyperVGeneration: enumValue(optString(props.hyperVGeneration, 'hyperVGeneration'), GENERATIONS) ?? existing.hyperVGeneration,
        diskSizeGB: optNumber(props.diskSizeGB, 'diskSizeGB') ?? existing.diskSizeGB,
        extraProperties: mergePatch(existing.extraProperties ?? {}, withoutKeys(props, [...DISK_READONLY, ...DISK_MODELLED])) as Json,
      };
      return updateDisk(sim, ctx, existing, merged, true);
    }
    case 'DELETE': {
      if (!existing) return { status: 204 };
      if (existing.managedBy) {
        const vm = sim.state.vms[existing.managedBy];
        throw operationNotAllowed(`Disk ${existing.name} is attached to VM ${vm?.id ?? existing.managedBy}.`);
      }
      if (activeGrant(existing)) {
        throw operationNotAllowed(
          `Disk ${existing.name} cannot be deleted while it is in state 'ActiveSAS'. Revoke access to the disk (endGetAccess) first.`,
        );
      }
      return sim.acceptDelete(ctx, existing, { provider: COMPUTE, kind: 'diskDelete', resourceKey: k });
    }
    default:
      throw methodNotAllowed(ctx);
  }
}

interface DiskSpec {
  location: string;
  tags?: Record<string, string>;
  skuName: string;
  osType?: OsType;
  hyperVGeneration?: HyperVGeneration;
  creationData?: { createOption: string; sourceUri?: string; storageAccountId?: string; sourceResourceId?: string };
  diskSizeGB?: number;
  extraProperties: Json;
}

function diskSku(name: string | undefined): string | undefined {
  if (name === undefined) return undefined;
  const sku = enumValue(name, DISK_SKUS);
  if (!sku) throw invalidParameter(`The value '${name}' is not a valid disk SKU. Valid values are ${DISK_SKUS.join(', ')}.`, 'sku.name');
  return sku;
}

function parseDiskBody(body: Json): DiskSpec {
  const location = optString(body.location, 'location');
  if (!location) throw new ArmError(400, 'LocationRequired', 'The location property is required for this definition.');
  const props = objectAt(body.properties, 'properties');
  const osType = enumOrThrow(optString(props.osType, 'osType'), OS_TYPES, 'osType');
  const hyperVGeneration = enumOrThrow(optString(props.hyperVGeneration, 'hyperVGeneration'), GENERATIONS, 'hyperVGeneration');
  const cd = optObject(props.creationData, 'creationData');
  let creationData: DiskSpec['creationData'];
  if (cd) {
    const opt = optString(cd.createOption, 'creationData.createOption');
    if (!opt) throw missingParameter('createOption', 'BadRequest');
    const createOption = enumValue(opt, DISK_CREATE_OPTIONS);
    if (!createOption)
      throw invalidParameter(`The value '${opt}' of parameter 'createOption' is not allowed.`, 'creationData.createOption');
    creationData = {
      createOption,
      sourceUri: optString(cd.sourceUri, 'creationData.sourceUri'),
      storageAccountId: optString(cd.storageAccountId, 'creationData.storageAccountId'),
      sourceResourceId: optString(cd.sourceResourceId, 'creationData.sourceResourceId'),
    };
  }
  const diskSizeGB = optNumber(props.diskSizeGB, 'diskSizeGB');
  if (diskSizeGB !== undefined && !(Number.isInteger(diskSizeGB) && diskSizeGB > 0 && diskSizeGB <= 32767)) {
    throw invalidParameter(
      `The value ${diskSizeGB} of parameter 'diskSizeGB' is out of range. The value must be between 1 and 32767, inclusive.`,
      'diskSizeGB',
    );
  }
  return {
    location,
    tags: optTags(body.tags),
    skuName: diskSku(optString(optObject(body.sku, 'sku')?.name, 'sku.name')) ?? 'Standard_LRS',
    osType,
    hyperVGeneration,
    creationData,
    diskSizeGB,
    extraProperties: withoutKeys(props, [...DISK_READONLY, ...DISK_MODELLED]),
  };
}

async function createDisk(sim: ArmSim, ctx: ReqCtx, id: string, rgName: string, name: string, spec: DiskSpec): Promise<Reply> {
  const cd = spec.creationData;
  if (!cd) throw missingParameter('creationData', 'BadRequest');
  let diskSizeBytes: number;
  let diskSizeGB: number;
  let osType = spec.osType;
  let hyperVGeneration = spec.hyperVGeneration;
  let importFrom: { virtualSize: number; blob: PageBlobClient } | undefined;
  let copyOf: DiskRec | undefined;
  switch (cd.createOption) {
    case 'Empty':
      if (spec.diskSizeGB === undefined) throw missingParameter('diskSizeGB', 'BadRequest');
      diskSizeGB = spec.diskSizeGB;
      diskSizeBytes = diskSizeGB * GiB;
      break;
    case 'Import': {
      const source = await checkImportSource(sim, cd.sourceUri, cd.storageAccountId);
      importFrom = source;
      const virtualSize = source.virtualSize;
      const needGB = Math.ceil(virtualSize / GiB);
      if (spec.diskSizeGB !== undefined && spec.diskSizeGB < needGB) {
        throw badRequest(
          `The specified disk size ${spec.diskSizeGB} GB is smaller than the size of the corresponding disk in the VHD, which is ${virtualSize} bytes (${needGB} GB). Please choose equal or greater size or do not specify size.`,
        );
      }
      diskSizeGB = spec.diskSizeGB ?? needGB;
      diskSizeBytes = spec.diskSizeGB !== undefined ? spec.diskSizeGB * GiB : virtualSize;
      break;
    }
    case 'Copy': {
      if (!cd.sourceResourceId) throw missingParameter('sourceResourceId', 'BadRequest');
      sim.settleResource(key(cd.sourceResourceId));
      const src = sim.state.disks[key(cd.sourceResourceId)];
      if (!src) {
        const p = parseResourceId(cd.sourceResourceId);
        throw resourceNotFound('Microsoft.Compute/disks', p?.name ?? cd.sourceResourceId, p?.resourceGroup ?? '');
      }
      diskSizeGB = Math.max(spec.diskSizeGB ?? 0, src.diskSizeGB);
      diskSizeBytes = spec.diskSizeGB !== undefined && spec.diskSizeGB > src.diskSizeGB ? spec.diskSizeGB * GiB : src.diskSizeBytes;
      copyOf = src;
      osType ??= src.osType;
      hyperVGeneration ??= src.hyperVGeneration;
      break;
    }
    default:
      throw invalidParameter(
        `Disk creation with createOption '${cd.createOption}' is not supported by the ARM simulator; use Import, Empty or Copy.`,
        'creationData.createOption',
      );
  }
  const rec: DiskRec = {
    id,
    name,
    resourceGroup: rgName,
    location: normLocation(spec.location),
    tags: spec.tags,
    skuName: spec.skuName,
    osType,
    // Azure records V1 for OS disks when the caller does not say; data disks carry no generation.
    hyperVGeneration: hyperVGeneration ?? (osType ? 'V1' : undefined),
    createOption: cd.createOption,
    sourceUri: cd.createOption === 'Import' ? cd.sourceUri : undefined,
    storageAccountId: cd.createOption === 'Import' ? cd.storageAccountId : undefined,
    sourceResourceId: cd.createOption === 'Copy' ? cd.sourceResourceId : undefined,
    diskSizeGB,
    diskSizeBytes,
    uniqueId: uuid(),
    timeCreated: nowIso(),
    provisioningState: 'Updating',
    extraProperties: Object.keys(spec.extraProperties).length ? spec.extraProperties : undefined,
  };
  // The disk's own copy of its data, taken now: later writes to a source blob or disk do not reach it.
  if (importFrom) {
    try {
      await sim.disks.importPageBlob(rec, importFrom.blob, importFrom.virtualSize);
    } catch (err) {
      throw invalidParameter(`Unable to copy the source blob ${cd.sourceUri ?? ''}: ${(err as Error).message}`, 'sourceUri');
    }
  } else if (copyOf && sim.disks.has(copyOf)) {
    sim.disks.copy(copyOf, rec);
  } else {
    sim.disks.createEmpty(rec);
  }
  const k = key(id);
  sim.state.disks[k] = rec;
  const op = sim.startOperation(ctx, { provider: COMPUTE, location: rec.location, kind: 'diskPut', resourceKey: k, action: 'PUT' });
  sim.save();
  return { status: 202, body: renderDisk(sim, rec), headers: sim.operationHeaders(ctx, op) };
}

/** Azure's checks on an Import source: account, blob, page blob, N MiB + 512 bytes, fixed-VHD footer. */
async function checkImportSource(
  sim: ArmSim,
  sourceUri: string | undefined,
  storageAccountId: string | undefined,
): Promise<{ virtualSize: number; blob: PageBlobClient }> {
  if (!storageAccountId) throw missingParameter('storageAccountId', 'BadRequest');
  if (!sourceUri) throw missingParameter('sourceUri', 'BadRequest');
  const acct = sim.state.storageAccounts[key(storageAccountId)];
  if (!acct) {
    const p = parseResourceId(storageAccountId);
    if (!p || p.provider.toLowerCase() !== 'microsoft.storage' || p.type.toLowerCase() !== 'storageaccounts') {
      throw invalidParameter(
        `The value '${storageAccountId}' of parameter 'storageAccountId' is not a valid storage account resource ID.`,
        'storageAccountId',
      );
    }
    throw resourceNotFound('Microsoft.Storage/storageAccounts', p.name, p.resourceGroup);
  }
  const where = blobPathInAccount(acct, sourceUri);
  if (!where) {
    throw invalidParameter(
      `The source URI '${sourceUri}' is not a blob URI in storage account '${acct.name}' (blob endpoint ${acct.blobEndpoint}).`,
      'sourceUri',
    );
  }
  let info;
  try {
    info = await sim.blobs.inspect(acct, where.container, where.blob);
  } catch (err) {
    throw invalidParameter(`Unable to access the source blob ${sourceUri}: ${(err as Error).message}`, 'sourceUri');
  }
  if (!info.exists) {
    throw invalidParameter(
      `The source blob ${sourceUri} does not exist or is not accessible with the key of storage account '${acct.name}'.`,
      'sourceUri',
    );
  }
  if (info.blobType !== 'PageBlob') {
    throw badRequest(
      `Only blobs formatted as VHDs can be imported. The blob ${sourceUri} is a ${info.blobType ?? 'non-page'} blob; managed disks can only be imported from page blobs.`,
    );
  }
  const size = info.size ?? 0;
  const sizeProblem = checkVhdBlobSize(size);
  if (sizeProblem) throw vhdError(sizeProblem, sourceUri, where.blob);
  const footerProblem = checkVhdFooter(size, parseVhdFooter(info.footer ?? Buffer.alloc(512)));
  if (footerProblem) throw vhdError(footerProblem, sourceUri, where.blob);
  return { virtualSize: size - 512, blob: sim.blobs.pageBlob(acct, where.container, where.blob) };
}

function vhdError(p: VhdProblem, uri: string, blob: string): ArmError {
  switch (p.kind) {
    case 'size':
      return badRequest(
        `The VHD ${uri} has an unsupported virtual size of ${p.virtualSize} bytes. The size must be a whole number (in MBs).`,
      );
    case 'tooLarge':
      return badRequest(
        `The VHD ${uri} has a virtual size of ${p.virtualSize} bytes, which exceeds the maximum supported disk size of 32 TiB.`,
      );
    case 'cookie':
      return badRequest(
        `The specified cookie value in VHD footer indicates that disk '${blob}' with blob ${uri} is not a supported VHD. Disk is expected to have cookie value 'conectix'.`,
      );
    case 'checksum':
      return badRequest(
        `Only blobs formatted as VHDs can be imported. The VHD footer of ${uri} has checksum 0x${p.actual.toString(16)}, expected 0x${p.expected.toString(16)}.`,
      );
    case 'diskType': {
      const t = p.diskType === 3 ? 'dynamic' : p.diskType === 4 ? 'differencing' : `type ${p.diskType}`;
      return badRequest(
        `The VHD ${uri} is a ${t} VHD. Only fixed VHDs are supported; convert the VHD to the fixed format before importing it.`,
      );
    }
    case 'currentSize':
      return badRequest(
        `The VHD ${uri} has an unsupported virtual size: the footer's current size is ${p.currentSize} bytes, but the blob holds ${p.virtualSize} bytes before the footer.`,
      );
  }
}

function updateDisk(sim: ArmSim, ctx: ReqCtx, d: DiskRec, spec: DiskSpec, patch = false): Reply {
  if (normLocation(spec.location) !== d.location) throw invalidLocation(d.name, d.location, spec.location, d.resourceGroup);
  const cd = spec.creationData;
  if (cd) {
    const same =
      cd.createOption.toLowerCase() === d.createOption.toLowerCase() &&
      (cd.sourceUri ?? '') === (d.sourceUri ?? '') &&
      key(cd.storageAccountId ?? '') === key(d.storageAccountId ?? '') &&
      key(cd.sourceResourceId ?? '') === key(d.sourceResourceId ?? '');
    if (!same) {
      throw new ArmError(409, 'PropertyChangeNotAllowed', "Changing property 'creationData' is not allowed.", { target: 'creationData' });
    }
  }
  const attachedVm = d.managedBy ? sim.state.vms[d.managedBy] : undefined;
  const next = {
    tags: spec.tags,
    skuName: spec.skuName,
    osType: spec.osType ?? d.osType,
    hyperVGeneration: spec.hyperVGeneration ?? d.hyperVGeneration,
    diskSizeGB: spec.diskSizeGB ?? d.diskSizeGB,
    extraProperties: Object.keys(spec.extraProperties).length ? spec.extraProperties : undefined,
  };
  if (next.diskSizeGB < d.diskSizeGB) {
    throw badRequest(`Disk size reduction is not supported. Current size is ${d.diskSizeGB} GB, requested size is ${next.diskSizeGB} GB.`);
  }
  if (attachedVm && attachedVm.powerState !== 'deallocated') {
    if (next.diskSizeGB !== d.diskSizeGB) {
      throw operationNotAllowed(
        `Disk '${d.name}' is attached to VM '${attachedVm.id}' which is not deallocated. Resizing a disk requires the VM to be deallocated or the disk to be detached.`,
      );
    }
    if (next.osType !== d.osType || next.hyperVGeneration !== d.hyperVGeneration) {
      throw operationNotAllowed(
        `Changing property 'osType' or 'hyperVGeneration' of disk '${d.name}' is not allowed while it is attached to a VM.`,
      );
    }
  }
  const current = {
    tags: d.tags,
    skuName: d.skuName,
    osType: d.osType,
    hyperVGeneration: d.hyperVGeneration,
    diskSizeGB: d.diskSizeGB,
    extraProperties: d.extraProperties,
  };
  if (canonicalJson(current) === canonicalJson(next) && d.provisioningState === 'Succeeded') {
    return { status: 200, body: renderDisk(sim, d) };
  }
  if (next.diskSizeGB !== d.diskSizeGB) d.diskSizeBytes = next.diskSizeGB * GiB;
  Object.assign(d, next);
  sim.disks.resize(d);
  d.provisioningState = 'Updating';
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: d.location,
    kind: 'diskPut',
    resourceKey: key(d.id),
    action: patch ? 'PATCH' : 'PUT',
  });
  sim.save();
  return { status: patch ? 202 : 200, body: renderDisk(sim, d), headers: sim.operationHeaders(ctx, op) };
}

const SKU_TIER: Record<string, string> = {
  Standard_LRS: 'Standard',
  StandardSSD_LRS: 'Standard',
  StandardSSD_ZRS: 'Standard',
  Premium_LRS: 'Premium',
  Premium_ZRS: 'Premium',
  PremiumV2_LRS: 'Premium',
  UltraSSD_LRS: 'Ultra',
};

export function diskState(sim: ArmSim, d: DiskRec): string {
  if (activeGrant(d)) return 'ActiveSAS';
  if (!d.managedBy) return 'Unattached';
  // A disk of a stopped-deallocated VM is 'Reserved': still owned, but not mounted on a host.
  return sim.state.vms[d.managedBy]?.powerState === 'deallocated' ? 'Reserved' : 'Attached';
}

export function renderDisk(sim: ArmSim, d: DiskRec): Json {
  const creationData: Json = { createOption: d.createOption };
  if (d.storageAccountId) creationData.storageAccountId = d.storageAccountId;
  if (d.sourceUri) creationData.sourceUri = d.sourceUri;
  if (d.sourceResourceId) {
    creationData.sourceResourceId = d.sourceResourceId;
    const src = sim.state.disks[key(d.sourceResourceId)];
    if (src) creationData.sourceUniqueId = src.uniqueId;
  }
  return {
    id: d.id,
    name: d.name,
    type: 'Microsoft.Compute/disks',
    location: d.location,
    tags: d.tags,
    managedBy: d.managedBy ? (sim.state.vms[d.managedBy]?.id ?? d.managedBy) : undefined,
    sku: { name: d.skuName, tier: SKU_TIER[d.skuName] ?? 'Standard' },
    properties: {
      ...(d.extraProperties ?? {}),
      osType: d.osType,
      hyperVGeneration: d.hyperVGeneration,
      creationData,
      diskSizeGB: d.diskSizeGB,
      diskSizeBytes: d.diskSizeBytes,
      uniqueId: d.uniqueId,
      timeCreated: d.timeCreated,
      provisioningState: d.provisioningState,
      diskState: diskState(sim, d),
      encryption: (d.extraProperties?.encryption as Json | undefined) ?? { type: 'EncryptionAtRestWithPlatformKey' },
      networkAccessPolicy: (d.extraProperties?.networkAccessPolicy as string | undefined) ?? 'AllowAll',
      publicNetworkAccess: (d.extraProperties?.publicNetworkAccess as string | undefined) ?? 'Enabled',
    },
  };
}

/**
 * Gives every disk its store (disks from a state written before disks had stores, and seeded ones): an
 * imported disk copies its source blob if that still exists, any other starts empty. Then the running VMs'
 * device paths are laid out.
 */
export async function ensureDiskStores(sim: ArmSim): Promise<void> {
  for (const d of Object.values(sim.state.disks)) {
    if (sim.disks.has(d)) continue;
    const acct = d.storageAccountId ? sim.state.storageAccounts[key(d.storageAccountId)] : undefined;
    const where = acct && d.sourceUri ? blobPathInAccount(acct, d.sourceUri) : undefined;
    if (acct && where) {
      const info = await sim.blobs.inspect(acct, where.container, where.blob).catch(() => undefined);
      if (info?.exists && info.size !== undefined) {
        await sim.disks.importPageBlob(d, sim.blobs.pageBlob(acct, where.container, where.blob), info.size - 512);
        continue;
      }
    }
    sim.disks.createEmpty(d);
  }
  for (const vm of Object.values(sim.state.vms)) sim.disks.syncDevices(vm, sim.state.disks);
}

// ---- virtual machines ----------------------------------------------------------------------------

export async function vmsRoute(sim: ArmSim, ctx: ReqCtx, rg: string, name: string | undefined, rest: string[]): Promise<Reply> {
  const target = sim.routeTarget(ctx, rg, name, COMPUTE, 'virtualMachines');
  if (target.list) return target.list;
  if (name === undefined) throw unknownRoute(ctx);
  const { rgName, id, k } = target;
  const existing = sim.state.vms[k];
  const need = (): VmRec => {
    if (!existing) throw resourceNotFound('Microsoft.Compute/virtualMachines', name, rgName);
    return existing;
  };
  if (rest.length === 0) {
    switch (ctx.method) {
      case 'GET': {
        const expand = ctx.query.get('$expand')?.toLowerCase();
        const vm = need();
        if (expand !== 'instanceview') return { status: 200, body: renderVm(sim, vm, false) };
        return { status: 200, body: renderVm(sim, vm, true, await vmAgentCheck(sim, vm)) };
      }
      case 'PUT': {
        checkResourceName(name, 'virtualMachines');
        checkPutPreconditions(ctx, existing);
        const body = objectAt(ctx.body, 'body');
        const spec = parseVmBody(body, existing);
        if (existing) return updateVm(sim, ctx, existing, spec, 'vmPut');
        return createVm(sim, ctx, id, rgName, name, spec);
      }
      case 'PATCH': {
        const vm = need();
        const merged = objectAt(mergePatch(renderVm(sim, vm, false), ctx.body), 'body');
        merged.location = vm.location;
        return updateVm(sim, ctx, vm, parseVmBody(merged, vm), 'vmPut');
      }
      case 'DELETE':
        if (!existing) return { status: 204 };
        return deleteVm(sim, ctx, existing);
      default:
        throw methodNotAllowed(ctx);
    }
  }
  if (rest.length !== 1) throw unknownRoute(ctx);
  const action = rest[0];
  if (ctx.method === 'GET') {
    if (action === 'instanceview') {
      const vm = need();
      return { status: 200, body: renderInstanceView(sim, vm, await vmAgentCheck(sim, vm)) };
    }
    if (action === 'vmsizes') {
      const vm = need();
      const gen = vm.hyperVGeneration;
      return { status: 200, body: { value: VM_SIZES.filter((z) => z.generations.includes(gen)).map(renderVmSize) } };
    }
    throw unknownRoute(ctx);
  }
  if (ctx.method !== 'POST') throw methodNotAllowed(ctx);
  switch (action) {
    case 'start':
      return powerOp(sim, ctx, need(), 'start');
    case 'poweroff':
      return powerOp(sim, ctx, need(), 'powerOff');
    case 'deallocate':
      return powerOp(sim, ctx, need(), 'deallocate');
    case 'restart':
      return powerOp(sim, ctx, need(), 'restart');
    case 'runcommand':
      return runCommand(sim, ctx, need());
    case 'attachdetachdatadisks':
      return attachDetach(sim, ctx, need());
    default:
      throw unknownRoute(ctx);
  }
}

interface DataDiskSpec {
  lun: number;
  createOption: string;
  diskId?: string;
  name?: string;
  diskSizeGB?: number;
  storageAccountType?: string;
  caching: string;
  deleteOption: 'Detach' | 'Delete';
  toBeDetached: boolean;
}

interface VmSpec {
  location: string;
  tags?: Record<string, string>;
  vmSize: string;
  osDisk: { diskId: string; osType?: OsType; caching: string; deleteOption: 'Detach' | 'Delete' };
  dataDisks: DataDiskSpec[];
  nics: VmNicRef[];
  extraProperties: Json;
}

function parseVmBody(body: Json, existing: VmRec | undefined): VmSpec {
  const location = optString(body.location, 'location');
  if (!location) throw new ArmError(400, 'LocationRequired', 'The location property is required for this definition.');
  const props = objectAt(body.properties, 'properties');
  const hw = optObject(props.hardwareProfile, 'hardwareProfile');
  const vmSize = optString(hw?.vmSize, 'hardwareProfile.vmSize') ?? existing?.vmSize;
  if (!vmSize) throw missingParameter('hardwareProfile');
  const sp = optObject(props.storageProfile, 'storageProfile');
  if (sp?.imageReference !== undefined && !existing) {
    throw invalidParameter(
      'Creating a VM from an image is not supported by the ARM simulator; attach existing managed disks with createOption Attach.',
      'imageReference',
    );
  }
  let osDisk: VmSpec['osDisk'];
  const od = optObject(sp?.osDisk, 'storageProfile.osDisk');
  if (od) {
    const opt = optString(od.createOption, 'osDisk.createOption');
    if (!opt) throw missingParameter('osDisk.createOption');
    if (opt.toLowerCase() !== 'attach') {
      throw invalidParameter(
        `osDisk.createOption '${opt}' is not supported by the ARM simulator; attach an existing managed disk with createOption 'Attach'.`,
        'osDisk.createOption',
      );
    }
    if (od.vhd !== undefined) throw invalidParameter('Unmanaged (VHD blob) OS disks are not supported; use a managed disk.', 'osDisk.vhd');
    const diskId = optString(optObject(od.managedDisk, 'osDisk.managedDisk')?.id, 'osDisk.managedDisk.id');
    if (!diskId) throw missingParameter('osDisk.managedDisk.id');
    const osTypeRaw = optString(od.osType, 'osDisk.osType');
    const osType = enumValue(osTypeRaw, OS_TYPES);
    if (osTypeRaw !== undefined && !osType)
      throw invalidParameter(`The value '${osTypeRaw}' of parameter 'osDisk.osType' is not allowed.`, 'osDisk.osType');
    osDisk = {
      diskId: key(diskId),
      osType,
      caching: enumOrThrow(optString(od.caching, 'osDisk.caching'), CACHING, 'osDisk.caching') ?? 'ReadWrite',
      deleteOption: enumOrThrow(optString(od.deleteOption, 'osDisk.deleteOption'), DELETE_OPTIONS, 'osDisk.deleteOption') ?? 'Detach',
    };
  } else if (existing) {
    osDisk = {
      diskId: existing.osDisk.diskId,
      osType: existing.osType,
      caching: existing.osDisk.caching,
      deleteOption: existing.osDisk.deleteOption,
    };
  } else {
    throw missingParameter('osDisk');
  }

  let dataDisks: DataDiskSpec[];
  const dd = optArray(sp?.dataDisks, 'storageProfile.dataDisks');
  if (dd) {
    dataDisks = dd.map((raw, i) => parseDataDisk(raw, i));
  } else {
    dataDisks = (existing?.dataDisks ?? []).map((d) => ({
      lun: d.lun ?? 0,
      createOption: d.createOption,
      diskId: d.diskId,
      caching: d.caching,
      deleteOption: d.deleteOption,
      toBeDetached: false,
    }));
  }

  let nics: VmNicRef[];
  const np = optObject(props.networkProfile, 'networkProfile');
  if (np?.networkInterfaceConfigurations !== undefined) {
    throw invalidParameter(
      'networkInterfaceConfigurations are not supported by the ARM simulator; create the NIC and reference it.',
      'networkProfile',
    );
  }
  const ni = optArray(np?.networkInterfaces, 'networkProfile.networkInterfaces');
  if (ni) {
    nics = ni.map((raw, i) => {
      const n = objectAt(raw, `networkInterfaces[${i}]`);
      const nid = optString(n.id, `networkInterfaces[${i}].id`);
      if (!nid) throw missingParameter(`networkInterfaces[${i}].id`);
      const p = objectAt(n.properties, `networkInterfaces[${i}].properties`);
      const ref: VmNicRef = { id: key(nid) };
      const primary = optBoolean(p.primary, 'primary');
      if (primary !== undefined) ref.primary = primary;
      const del = enumOrThrow(optString(p.deleteOption, 'deleteOption'), DELETE_OPTIONS, 'deleteOption');
      if (del) ref.deleteOption = del;
      return ref;
    });
  } else {
    nics = existing?.nics.map((n) => ({ ...n })) ?? [];
  }
  return {
    location,
    tags: body.tags !== undefined ? optTags(body.tags) : existing?.tags,
    vmSize,
    osDisk,
    dataDisks,
    nics,
    extraProperties: withoutKeys(props, [...VM_READONLY, ...VM_MODELLED]),
  };
}

function parseDataDisk(raw: unknown, i: number): DataDiskSpec {
  const d = objectAt(raw, `dataDisks[${i}]`);
  const lun = optNumber(d.lun, `dataDisks[${i}].lun`);
  if (lun === undefined) throw missingParameter('dataDisk.lun');
  if (!Number.isInteger(lun) || lun < 0 || lun > 63)
    throw invalidParameter(`The value ${lun} of parameter 'lun' is out of range. Valid LUNs are 0-63.`, `dataDisks[${i}].lun`);
  const opt = optString(d.createOption, `dataDisks[${i}].createOption`);
  if (!opt) throw missingParameter('dataDisk.createOption');
  const createOption = enumValue(opt, ['Attach', 'Empty', 'FromImage', 'Copy', 'Restore'] as const);
  if (createOption !== 'Attach' && createOption !== 'Empty') {
    throw invalidParameter(
      `Data disk createOption '${opt}' is not supported by the ARM simulator; use Attach or Empty.`,
      `dataDisks[${i}].createOption`,
    );
  }
  const md = optObject(d.managedDisk, `dataDisks[${i}].managedDisk`);
  const diskId = optString(md?.id, `dataDisks[${i}].managedDisk.id`);
  if (createOption === 'Attach' && !diskId) throw missingParameter('dataDisk.managedDisk.id');
  const diskSizeGB = optNumber(d.diskSizeGB, `dataDisks[${i}].diskSizeGB`);
  if (createOption === 'Empty' && !diskId && diskSizeGB === undefined) throw missingParameter('dataDisk.diskSizeGB');
  return {
    lun,
    createOption,
    diskId: diskId ? key(diskId) : undefined,
    name: optString(d.name, `dataDisks[${i}].name`),
    diskSizeGB,
    storageAccountType: diskSku(optString(md?.storageAccountType, 'managedDisk.storageAccountType')),
    caching: enumOrThrow(optString(d.caching, 'caching'), CACHING, `dataDisks[${i}].caching`) ?? 'None',
    deleteOption: enumOrThrow(optString(d.deleteOption, 'deleteOption'), DELETE_OPTIONS, `dataDisks[${i}].deleteOption`) ?? 'Detach',
    toBeDetached: optBoolean(d.toBeDetached, 'toBeDetached') ?? false,
  };
}

interface VmPlan {
  size: VmSizeInfo;
  osType: OsType;
  generation: HyperVGeneration;
  osDisk: DiskRec;
  /** Data disks after the change, with disks to create for `Empty` entries. */
  dataDisks: Array<{ spec: DataDiskSpec; disk?: DiskRec; create?: { name: string; sizeGB: number; sku: string } }>;
}

/** CRP-style validation of a VM model against the current state; throws the ARM error Azure would send. */
function planVm(sim: ArmSim, vmKey: string, vmName: string, rgName: string, spec: VmSpec, existing: VmRec | undefined): VmPlan {
  const location = normLocation(spec.location);
  if (existing && existing.location !== location) throw invalidLocation(vmName, existing.location, spec.location, rgName);
  const size = findVmSize(spec.vmSize);
  if (!size) {
    throw invalidParameter(
      `The value ${spec.vmSize} provided for the VM size is not valid. The valid sizes in the current region are: ${listSizes()}.`,
      'vmSize',
    );
  }

  const osDisk = lookupDisk(sim, spec.osDisk.diskId);
  checkDiskUsable(sim, osDisk, vmKey, vmName, location);
  const osType = spec.osDisk.osType ?? osDisk.osType;
  if (!osType) throw missingParameter('osDisk.osType');
  if (spec.osDisk.osType && osDisk.osType && spec.osDisk.osType !== osDisk.osType) {
    throw invalidParameter(
      `The osType '${spec.osDisk.osType}' given for the OS disk does not match the osType '${osDisk.osType}' of managed disk ${osDisk.id}.`,
      'osDisk.osType',
    );
  }
  const generation = osDisk.hyperVGeneration ?? 'V1';
  if (!size.generations.includes(generation)) {
    throw badRequest(
      `The selected VM size '${size.name}' cannot boot Hypervisor Generation '${generation.slice(1)}'. If this was a Create operation please check that the Hypervisor Generation of the Image matches the Hypervisor Generation of the selected VM Size. If this was an Update operation please select a Hypervisor Generation '${generation.slice(1)}' VM Size.`,
    );
  }
  if (existing && existing.osDisk.diskId !== osDisk.id.toLowerCase()) {
    if (existing.powerState !== 'deallocated' && existing.powerState !== 'stopped') {
      throw operationNotAllowed(
        `Changing property 'osDisk.managedDisk.id' is not allowed while VM '${vmName}' is running. Stop (deallocate) the VM before swapping the OS disk.`,
      );
    }
    if (existing.hyperVGeneration !== generation) {
      throw badRequest(
        `The Hyper-V generation '${generation}' of OS disk '${osDisk.name}' does not match the Hyper-V generation '${existing.hyperVGeneration}' of virtual machine '${vmName}'.`,
      );
    }
    if (existing.osType !== osType) {
      throw badRequest(
        `The OS type '${osType}' of disk '${osDisk.name}' does not match the OS type '${existing.osType}' of virtual machine '${vmName}'.`,
      );
    }
  }

  const active = spec.dataDisks.filter((d) => !d.toBeDetached);
  const luns = new Set<number>();
  const seen = new Set<string>([osDisk.id.toLowerCase()]);
  const dataDisks: VmPlan['dataDisks'] = [];
  for (const d of active) {
    if (luns.has(d.lun)) throw invalidParameter(`A disk at LUN ${d.lun} already exists.`, 'dataDisks');
    luns.add(d.lun);
    const existingDisk = d.diskId ? sim.state.disks[d.diskId] : undefined;
    if (d.createOption === 'Attach' || (d.diskId && existingDisk)) {
      const disk = lookupDisk(sim, d.diskId ?? '');
      if (seen.has(disk.id.toLowerCase())) {
        throw invalidParameter(`Disk ${disk.id} is specified more than once in the storage profile of VM '${vmName}'.`, 'dataDisks');
      }
      seen.add(disk.id.toLowerCase());
      checkDiskUsable(sim, disk, vmKey, vmName, location);
      dataDisks.push({ spec: d, disk });
    } else {
      const name = d.name ?? `${vmName}_disk${d.lun + 2}_${hex(16)}`;
      const newId = key(resourceId(sim.subscriptionId, rgName, COMPUTE, 'disks', name));
      const clash = sim.state.disks[newId];
      if (clash) {
        if (clash.managedBy !== vmKey) {
          throw new ArmError(
            409,
            'Conflict',
            `Disk '${name}' already exists in resource group '${rgName}'. Attach it with createOption 'Attach'.`,
          );
        }
        dataDisks.push({ spec: d, disk: clash });
      } else {
        dataDisks.push({ spec: d, create: { name, sizeGB: d.diskSizeGB ?? 0, sku: d.storageAccountType ?? 'Standard_LRS' } });
      }
    }
  }
  if (dataDisks.length > size.maxDataDiskCount) {
    throw operationNotAllowed(`The maximum number of data disks allowed to be attached to a VM of this size is ${size.maxDataDiskCount}.`);
  }

  if (spec.nics.length === 0) {
    throw invalidParameter(`Virtual machine ${vmName} must have at least one network interface.`, 'networkProfile.networkInterfaces');
  }
  if (spec.nics.length > size.maxNics) {
    throw operationNotAllowed(
      `The number of network interfaces for virtual machine ${vmName} exceeds the maximum allowed for the virtual machine size ${size.name}. The number of network interfaces is ${spec.nics.length} and the maximum allowed is ${size.maxNics}.`,
    );
  }
  const nicIds = new Set<string>();
  for (const n of spec.nics) {
    if (nicIds.has(n.id))
      throw invalidParameter(`Network interface ${n.id} is referenced more than once by VM '${vmName}'.`, 'networkProfile');
    nicIds.add(n.id);
    sim.settleResource(n.id);
    const nic = sim.state.nics[n.id];
    if (!nic) throw new ArmError(404, 'NotFound', `Resource ${n.id} was not found.`);
    if (nic.virtualMachineId && nic.virtualMachineId !== vmKey) {
      throw new ArmError(
        400,
        'NicInUse',
        `Network Interface ${nic.id} is used by existing resource ${sim.state.vms[nic.virtualMachineId]?.id ?? nic.virtualMachineId}. In order to use this network interface, first remove it from that resource.`,
      );
    }
    if (nic.location !== location) {
      throw invalidParameter(
        `Network interface ${nic.id} is in location '${nic.location}'; it can only be used by virtual machines in the same location, not '${location}'.`,
        'networkProfile',
      );
    }
  }
  if (spec.nics.length > 1 && spec.nics.filter((n) => n.primary === true).length !== 1) {
    throw invalidParameter(`Virtual machine ${vmName} must have one network interface set as the primary.`, 'networkProfile');
  }
  if (existing && existing.powerState !== 'deallocated') {
    const before = existing.nics
      .map((n) => n.id)
      .sort()
      .join('|');
    if (before !== [...nicIds].sort().join('|')) {
      throw operationNotAllowed(
        `Network interfaces of virtual machine ${vmName} can only be added or removed while the VM is deallocated.`,
      );
    }
  }

  if (!existing || existing.vmSize.toLowerCase() !== size.name.toLowerCase()) {
    const usage = sim.coreUsage(location, vmKey);
    const famUsed = usage.families[size.family] ?? 0;
    const famLimit = sim.familyLimit(size.family);
    if (famUsed + size.vCPUs > famLimit) {
      throw sim.quotaError(size.family, size.familyDisplay, location, famLimit, famUsed, size.vCPUs);
    }
    if (usage.total + size.vCPUs > sim.settings.quotas.regionalVCpus) {
      throw sim.quotaError(undefined, 'Total Regional vCPUs', location, sim.settings.quotas.regionalVCpus, usage.total, size.vCPUs);
    }
  }
  return { size, osType, generation, osDisk, dataDisks };
}

function listSizes(): string {
  // Kept short like CRP's list; the full set is in sizes.ts.
  return ['Standard_B1s', 'Standard_B2s', 'Standard_D2s_v3', 'Standard_D4s_v3', 'Standard_DS1_v2', 'Standard_A1_v2', '...'].join(',');
}

function lookupDisk(sim: ArmSim, diskKey: string): DiskRec {
  sim.settleResource(diskKey);
  const disk = sim.state.disks[diskKey];
  if (!disk) {
    const p = parseResourceId(diskKey);
    throw new ArmError(
      404,
      'NotFound',
      `Disk ${p?.name ?? diskKey} in resource group ${p?.resourceGroup ?? '?'} was not found (managed disk id ${diskKey}).`,
    );
  }
  return disk;
}

function checkDiskUsable(sim: ArmSim, disk: DiskRec, vmKey: string, vmName: string, location: string): void {
  if (disk.managedBy && disk.managedBy !== vmKey) {
    const owner = sim.state.vms[disk.managedBy];
    throw operationNotAllowed(
      `Cannot attach disk '${disk.name}' to VM '${vmName}' because it is already attached to VM '${owner?.id ?? disk.managedBy}'. A disk can be attached to only one VM at a time.`,
    );
  }
  if (disk.managedBy !== vmKey && activeGrant(disk)) {
    throw operationNotAllowed(
      `Cannot attach disk '${disk.name}' to VM '${vmName}' because the disk is in state 'ActiveSAS'. Revoke access to the disk (endGetAccess) first.`,
    );
  }
  if (disk.location !== location) {
    throw invalidParameter(
      `Disk ${disk.id} is in location '${disk.location}' and cannot be attached to a virtual machine in location '${location}'.`,
      'storageProfile',
    );
  }
  if (disk.provisioningState !== 'Succeeded' && disk.provisioningState !== 'Updating') {
    throw operationNotAllowed(`Disk '${disk.name}' is in provisioning state '${disk.provisioningState}' and cannot be attached.`);
  }
}

function diskRefsFromPlan(sim: ArmSim, vmKey: string, rgName: string, location: string, plan: VmPlan): VmDiskRef[] {
  return plan.dataDisks.map(({ spec, disk, create }) => {
    let d = disk;
    if (!d && create) {
      const id = resourceId(sim.subscriptionId, rgName, COMPUTE, 'disks', create.name);
      d = {
        id,
        name: create.name,
        resourceGroup: rgName,
        location,
        skuName: create.sku,
        createOption: 'Empty',
        diskSizeGB: create.sizeGB,
        diskSizeBytes: create.sizeGB * GiB,
        uniqueId: uuid(),
        timeCreated: nowIso(),
        provisioningState: 'Succeeded',
      };
      sim.disks.createEmpty(d);
      sim.state.disks[key(id)] = d;
    }
    if (!d) throw new Error('unreachable: data disk plan without disk');
    d.managedBy = vmKey;
    return {
      lun: spec.lun,
      diskId: key(d.id),
      name: d.name,
      createOption: create ? 'Empty' : spec.createOption === 'Empty' ? 'Empty' : 'Attach',
      caching: spec.caching,
      deleteOption: spec.deleteOption,
    };
  });
}

function createVm(sim: ArmSim, ctx: ReqCtx, id: string, rgName: string, name: string, spec: VmSpec): Reply {
  const k = key(id);
  const plan = planVm(sim, k, name, rgName, spec, undefined);
  const location = normLocation(spec.location);
  const vm: VmRec = {
    id,
    name,
    resourceGroup: rgName,
    location,
    tags: spec.tags,
    vmId: uuid(),
    vmSize: plan.size.name,
    osType: plan.osType,
    hyperVGeneration: plan.generation,
    osDisk: osDiskRef(plan, spec),
    dataDisks: diskRefsFromPlan(sim, k, rgName, location, plan),
    nics: spec.nics,
    // Azure boots a VM as part of creating it.
    powerState: 'starting',
    provisioningState: 'Creating',
    timeCreated: nowIso(),
    extraProperties: Object.keys(spec.extraProperties).length ? spec.extraProperties : undefined,
  };
  plan.osDisk.managedBy = k;
  for (const n of spec.nics) sim.state.nics[n.id].virtualMachineId = k;
  sim.state.vms[k] = vm;
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location,
    kind: 'vmPut',
    resourceKey: k,
    action: 'PUT',
    targetPower: 'running',
  });
  sim.save();
  return { status: 201, body: renderVm(sim, vm, false), headers: sim.operationHeaders(ctx, op, false) };
}

/** The VM's reference to the OS disk the plan resolved (always attached: the disk exists first). */
function osDiskRef(plan: VmPlan, spec: VmSpec): VmRec['osDisk'] {
  return {
    diskId: key(plan.osDisk.id),
    name: plan.osDisk.name,
    createOption: 'Attach',
    caching: spec.osDisk.caching,
    deleteOption: spec.osDisk.deleteOption,
    osType: plan.osType,
  };
}

function vmModel(vm: VmRec): unknown {
  return {
    tags: vm.tags ?? null,
    vmSize: vm.vmSize.toLowerCase(),
    osDisk: [vm.osDisk.diskId, vm.osDisk.caching, vm.osDisk.deleteOption],
    dataDisks: [...vm.dataDisks].sort((a, b) => (a.lun ?? 0) - (b.lun ?? 0)).map((d) => [d.lun, d.diskId, d.caching, d.deleteOption]),
    nics: vm.nics.map((n) => [n.id, n.primary ?? null, n.deleteOption ?? null]),
    extra: vm.extraProperties ?? {},
  };
}

function updateVm(sim: ArmSim, ctx: ReqCtx, vm: VmRec, spec: VmSpec, kind: 'vmPut' | 'vmAttachDetach'): Reply {
  const k = key(vm.id);
  const plan = planVm(sim, k, vm.name, vm.resourceGroup, spec, vm);
  const beforeDisks = new Set([vm.osDisk.diskId, ...vm.dataDisks.map((d) => d.diskId)]);
  const beforeNics = new Set(vm.nics.map((n) => n.id));
  const beforeModel = canonicalJson(vmModel(vm));

  // Build the new model on a copy first so that an unchanged PUT leaves everything untouched.
  const draft: VmRec = {
    ...vm,
    tags: spec.tags,
    vmSize: plan.size.name,
    osDisk: osDiskRef(plan, spec),
    dataDisks: plan.dataDisks.map(({ spec: d, disk, create }) => ({
      lun: d.lun,
      diskId: disk ? key(disk.id) : `new:${create?.name ?? ''}`,
      name: disk?.name ?? create?.name ?? '',
      createOption: d.createOption === 'Empty' ? 'Empty' : 'Attach',
      caching: d.caching,
      deleteOption: d.deleteOption,
    })),
    nics: spec.nics,
    extraProperties: Object.keys(spec.extraProperties).length ? spec.extraProperties : undefined,
  };
  const detaching = spec.dataDisks.some((d) => d.toBeDetached);
  if (!detaching && canonicalJson(vmModel(draft)) === beforeModel && vm.provisioningState === 'Succeeded' && kind === 'vmPut') {
    return { status: 200, body: renderVm(sim, vm, false) };
  }

  vm.tags = draft.tags;
  vm.vmSize = draft.vmSize;
  vm.osDisk = draft.osDisk;
  vm.osType = plan.osType;
  vm.dataDisks = diskRefsFromPlan(sim, k, vm.resourceGroup, vm.location, plan);
  vm.nics = spec.nics;
  vm.extraProperties = draft.extraProperties;
  plan.osDisk.managedBy = k;
  for (const n of spec.nics) sim.state.nics[n.id].virtualMachineId = k;
  const afterDisks = new Set([vm.osDisk.diskId, ...vm.dataDisks.map((d) => d.diskId)]);
  const afterNics = new Set(vm.nics.map((n) => n.id));
  const previousPower = vm.powerState;
  vm.provisioningState = 'Updating';
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: vm.location,
    kind,
    resourceKey: k,
    action: kind === 'vmPut' ? ctx.method : 'attachDetachDataDisks',
    previousPower,
    releaseDiskIds: [...beforeDisks].filter((d) => !afterDisks.has(d)),
    releaseNicIds: [...beforeNics].filter((n) => !afterNics.has(n)),
  });
  sim.save();
  if (kind === 'vmAttachDetach') return { status: 202, headers: sim.operationHeaders(ctx, op) };
  return { status: 200, body: renderVm(sim, vm, false), headers: sim.operationHeaders(ctx, op, false) };
}

function deleteVm(sim: ArmSim, ctx: ReqCtx, vm: VmRec): Reply {
  const k = key(vm.id);
  const disks = [vm.osDisk, ...vm.dataDisks];
  return sim.acceptDelete(ctx, vm, {
    provider: COMPUTE,
    kind: 'vmDelete',
    resourceKey: k,
    previousPower: vm.powerState,
    releaseDiskIds: disks.filter((d) => d.deleteOption !== 'Delete').map((d) => d.diskId),
    deleteDiskIds: disks.filter((d) => d.deleteOption === 'Delete').map((d) => d.diskId),
    releaseNicIds: vm.nics.filter((n) => n.deleteOption !== 'Delete').map((n) => n.id),
    deleteNicIds: vm.nics.filter((n) => n.deleteOption === 'Delete').map((n) => n.id),
  });
}

const TRANSITION: Record<string, { during: PowerState; target: PowerState }> = {
  start: { during: 'starting', target: 'running' },
  powerOff: { during: 'stopping', target: 'stopped' },
  deallocate: { during: 'deallocating', target: 'deallocated' },
  restart: { during: 'starting', target: 'running' },
};

function powerOp(sim: ArmSim, ctx: ReqCtx, vm: VmRec, action: 'start' | 'powerOff' | 'deallocate' | 'restart'): Reply {
  if (action === 'restart' && vm.powerState !== 'running') {
    throw operationNotAllowed(`Operation 'restart' is not allowed on VM '${vm.name}' since the VM is not running.`);
  }
  if (action === 'start' || action === 'restart') {
    const exported = [vm.osDisk, ...vm.dataDisks].map((r) => sim.state.disks[r.diskId]).find((d) => d && activeGrant(d));
    if (exported) {
      throw operationNotAllowed(
        `Cannot start VM '${vm.name}' because its disk '${exported.name}' is in state 'ActiveSAS'. Revoke access to the disk (endGetAccess) first.`,
      );
    }
  }
  const previous = vm.powerState;
  let { during, target } = TRANSITION[action];
  // Stopping a deallocated VM changes nothing: it stays deallocated.
  if (action === 'powerOff' && previous === 'deallocated') {
    during = 'deallocated';
    target = 'deallocated';
  }
  if (previous !== target || action === 'restart') vm.powerState = during;
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: vm.location,
    kind: 'vmPower',
    resourceKey: key(vm.id),
    action,
    targetPower: target,
    previousPower: previous,
  });
  sim.save();
  return { status: 202, headers: sim.operationHeaders(ctx, op) };
}

async function runCommand(sim: ArmSim, ctx: ReqCtx, vm: VmRec): Promise<Reply> {
  const body = objectAt(ctx.body, 'body');
  const commandId = optString(body.commandId, 'commandId');
  if (!commandId) throw missingParameter('commandId');
  const allowed: readonly string[] = vm.osType === 'Linux' ? LINUX_COMMANDS : WINDOWS_COMMANDS;
  const canonical = allowed.find((c) => c.toLowerCase() === commandId.toLowerCase());
  if (!canonical) {
    throw invalidParameter(
      `The command '${commandId}' is not available for ${vm.osType} virtual machines. Available commands: ${allowed.join(', ')}.`,
      'commandId',
    );
  }
  const script = (optArray(body.script, 'script') ?? []).map((line, i) => {
    if (typeof line !== 'string') throw invalidParameter(`script[${i}] must be a string`, 'script');
    return line;
  });
  const parameters = (optArray(body.parameters, 'parameters') ?? []).map((p, i) => {
    const o = objectAt(p, `parameters[${i}]`);
    return { name: String(o.name ?? ''), value: String(o.value ?? '') };
  });
  if (vm.powerState === 'deallocated' || vm.powerState === 'deallocating') {
    throw operationNotAllowed(
      `Operation 'RunCommand' is not allowed on VM '${vm.name}' since the VM is deallocated or marked to be deallocated.`,
    );
  }
  if (vm.powerState !== 'running' && vm.powerState !== 'starting') {
    throw operationNotAllowed('The operation requires the VM to be running (or set to run).');
  }
  const out = await sim.runCommandOutput({
    vmName: vm.name,
    resourceGroup: vm.resourceGroup,
    osType: vm.osType,
    commandId: canonical,
    script,
    parameters,
  });
  sim.recordRunCommand({
    at: nowIso(),
    vmId: vm.id,
    vmName: vm.name,
    commandId: canonical,
    script,
    parameters,
    ...out,
  });
  const result = runCommandResult(vm.osType, out);
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: vm.location,
    kind: 'vmRunCommand',
    resourceKey: key(vm.id),
    action: 'runCommand',
    result,
  });
  sim.save();
  return { status: 202, headers: sim.operationHeaders(ctx, op) };
}

/** The shapes the Linux and Windows run-command handlers report. */
function runCommandResult(osType: OsType, out: { stdout: string; stderr: string; exitCode: number }): Json {
  if (osType === 'Windows') {
    return {
      value: [
        { code: 'ComponentStatus/StdOut/succeeded', level: 'Info', displayStatus: 'Provisioning succeeded', message: out.stdout },
        { code: 'ComponentStatus/StdErr/succeeded', level: 'Info', displayStatus: 'Provisioning succeeded', message: out.stderr },
      ],
    };
  }
  const streams = `\n[stdout]\n${out.stdout}\n[stderr]\n${out.stderr}\n`;
  if (out.exitCode !== 0) {
    return {
      value: [
        {
          code: `ProvisioningState/failed/${out.exitCode}`,
          level: 'Error',
          displayStatus: 'Provisioning failed',
          message: `Enable failed: failed to execute command: command terminated with exit status=${out.exitCode}${streams}`,
        },
      ],
    };
  }
  return {
    value: [
      {
        code: 'ProvisioningState/succeeded',
        level: 'Info',
        displayStatus: 'Provisioning succeeded',
        message: `Enable succeeded: ${streams}`,
      },
    ],
  };
}

function attachDetach(sim: ArmSim, ctx: ReqCtx, vm: VmRec): Reply {
  const body = objectAt(ctx.body, 'body');
  const attach = optArray(body.dataDisksToAttach, 'dataDisksToAttach') ?? [];
  const detach = optArray(body.dataDisksToDetach, 'dataDisksToDetach') ?? [];
  if (attach.length === 0 && detach.length === 0) {
    throw invalidParameter('At least one of dataDisksToAttach or dataDisksToDetach must be specified.', 'dataDisksToAttach');
  }
  let current: DataDiskSpec[] = vm.dataDisks.map((d) => ({
    lun: d.lun ?? 0,
    createOption: d.createOption,
    diskId: d.diskId,
    caching: d.caching,
    deleteOption: d.deleteOption,
    toBeDetached: false,
  }));
  for (const [i, raw] of detach.entries()) {
    const o = objectAt(raw, `dataDisksToDetach[${i}]`);
    const id = optString(o.diskId, `dataDisksToDetach[${i}].diskId`);
    if (!id) throw missingParameter('dataDisksToDetach.diskId');
    if (!current.some((d) => d.diskId === key(id))) {
      throw invalidParameter(`Disk ${id} is not attached to virtual machine '${vm.name}' as a data disk.`, 'dataDisksToDetach');
    }
    current = current.filter((d) => d.diskId !== key(id));
  }
  for (const [i, raw] of attach.entries()) {
    const o = objectAt(raw, `dataDisksToAttach[${i}]`);
    const id = optString(o.diskId, `dataDisksToAttach[${i}].diskId`);
    if (!id) throw missingParameter('dataDisksToAttach.diskId');
    let lun = optNumber(o.lun, `dataDisksToAttach[${i}].lun`);
    if (lun === undefined) {
      lun = 0;
      while (current.some((d) => d.lun === lun)) lun++;
    }
    current.push({
      lun,
      createOption: 'Attach',
      diskId: key(id),
      caching: enumOrThrow(optString(o.caching, 'caching'), CACHING, 'caching') ?? 'None',
      deleteOption: enumOrThrow(optString(o.deleteOption, 'deleteOption'), DELETE_OPTIONS, 'deleteOption') ?? 'Detach',
      toBeDetached: false,
    });
  }
  const spec: VmSpec = {
    location: vm.location,
    tags: vm.tags,
    vmSize: vm.vmSize,
    osDisk: { diskId: vm.osDisk.diskId, osType: vm.osType, caching: vm.osDisk.caching, deleteOption: vm.osDisk.deleteOption },
    dataDisks: current,
    nics: vm.nics.map((n) => ({ ...n })),
    extraProperties: vm.extraProperties ?? {},
  };
  return updateVm(sim, ctx, vm, spec, 'vmAttachDetach');
}

export function completeOperation(sim: ArmSim, op: OperationRec, failed: boolean): void {
  const st = sim.state;
  if (op.kind === 'diskPut' || op.kind === 'diskDelete') {
    const d = st.disks[op.resourceKey];
    if (!d) return;
    if (op.kind === 'diskDelete' && !failed) {
      sim.disks.remove(d);
      delete st.disks[op.resourceKey];
      return;
    }
    d.provisioningState = failed ? 'Failed' : 'Succeeded';
    op.result = renderDisk(sim, d);
    return;
  }
  const vm = st.vms[op.resourceKey];
  if (!vm) return;
  const release = () => {
    const inUse = new Set([vm.osDisk.diskId, ...vm.dataDisks.map((d) => d.diskId)]);
    for (const id of op.releaseDiskIds ?? []) {
      const d = st.disks[id];
      if (d && d.managedBy === op.resourceKey && (!st.vms[op.resourceKey] || !inUse.has(id))) delete d.managedBy;
    }
    const nicsInUse = new Set(vm.nics.map((n) => n.id));
    for (const id of op.releaseNicIds ?? []) {
      const n = st.nics[id];
      if (n && n.virtualMachineId === op.resourceKey && (!st.vms[op.resourceKey] || !nicsInUse.has(id))) delete n.virtualMachineId;
    }
  };
  switch (op.kind) {
    case 'vmPut':
    case 'vmAttachDetach':
      if (failed) {
        vm.provisioningState = 'Failed';
        vm.lastFailureCode = op.error?.code;
        vm.powerState = op.previousPower ?? 'deallocated';
      } else {
        vm.provisioningState = 'Succeeded';
        delete vm.lastFailureCode;
        if (op.targetPower) vm.powerState = op.targetPower;
      }
      release();
      sim.disks.syncDevices(vm, st.disks);
      op.result = op.kind === 'vmAttachDetach' ? renderStorageProfile(sim, vm) : renderVm(sim, vm, false);
      return;
    case 'vmPower':
      if (failed) {
        vm.powerState = op.previousPower ?? vm.powerState;
        vm.provisioningState = 'Failed';
        vm.lastFailureCode = op.error?.code;
      } else {
        vm.powerState = op.targetPower ?? vm.powerState;
        vm.provisioningState = 'Succeeded';
        delete vm.lastFailureCode;
      }
      sim.disks.syncDevices(vm, st.disks);
      return;
    case 'vmRunCommand':
      return;
    case 'vmDelete': {
      if (failed) {
        vm.provisioningState = 'Failed';
        vm.lastFailureCode = op.error?.code;
        return;
      }
      delete st.vms[op.resourceKey];
      release();
      sim.disks.removeDevices(vm.name);
      for (const id of op.deleteDiskIds ?? []) {
        const d = st.disks[id];
        if (d) sim.disks.remove(d);
        delete st.disks[id];
      }
      for (const id of op.deleteNicIds ?? []) delete st.nics[id];
      return;
    }
    default:
      return;
  }
}

export function renderStorageProfile(sim: ArmSim, vm: VmRec): Json {
  const ref = (d: VmDiskRef): Json => {
    const disk = sim.state.disks[d.diskId];
    return {
      name: disk?.name ?? d.name,
      createOption: d.createOption,
      caching: d.caching,
      managedDisk: { id: disk?.id ?? d.diskId, storageAccountType: disk?.skuName ?? 'Standard_LRS' },
      deleteOption: d.deleteOption,
      diskSizeGB: disk?.diskSizeGB,
    };
  };
  return {
    osDisk: { osType: vm.osType, ...ref(vm.osDisk) },
    dataDisks: [...vm.dataDisks].sort((a, b) => (a.lun ?? 0) - (b.lun ?? 0)).map((d) => ({ lun: d.lun, ...ref(d), toBeDetached: false })),
    diskControllerType: 'SCSI',
  };
}

const agentProbes = new WeakMap<ArmSim, AgentProbe>();

/** The VM agent's state as a running VM's guest would report it (only a running VM's agent reports). */
export async function vmAgentCheck(sim: ArmSim, vm: VmRec): Promise<AgentCheck | undefined> {
  if (vm.powerState !== 'running') return undefined;
  let probe = agentProbes.get(sim);
  if (!probe) agentProbes.set(sim, (probe = agentProbeFor(sim.disks)));
  return probe.check(vm, sim.state.disks[vm.osDisk.diskId]);
}

export function renderVm(sim: ArmSim, vm: VmRec, withInstanceView: boolean, agent?: AgentCheck): Json {
  const properties: Json = {
    ...(vm.extraProperties ?? {}),
    vmId: vm.vmId,
    hardwareProfile: { vmSize: vm.vmSize },
    storageProfile: renderStorageProfile(sim, vm),
    networkProfile: {
      networkInterfaces: vm.nics.map((n) => {
        const p: Json = {};
        if (n.primary !== undefined) p.primary = n.primary;
        if (n.deleteOption) p.deleteOption = n.deleteOption;
        const out: Json = { id: sim.state.nics[n.id]?.id ?? n.id };
        if (Object.keys(p).length) out.properties = p;
        return out;
      }),
    },
    provisioningState: vm.provisioningState,
    timeCreated: vm.timeCreated,
  };
  if (withInstanceView) properties.instanceView = renderInstanceView(sim, vm, agent);
  return { id: vm.id, name: vm.name, type: 'Microsoft.Compute/virtualMachines', location: vm.location, tags: vm.tags, properties };
}

const POWER_DISPLAY: Record<PowerState, string> = {
  running: 'VM running',
  stopped: 'VM stopped',
  deallocated: 'VM deallocated',
  starting: 'VM starting',
  stopping: 'VM stopping',
  deallocating: 'VM deallocating',
};

/**
 * `agent`: the result of vmAgentCheck for the VM; a running VM without one (or with a check that failed)
 * shows the agent as Azure does when no agent reports: Not Ready, "VM Agent is unresponsive.".
 */
export function renderInstanceView(sim: ArmSim, vm: VmRec, agent?: AgentCheck): Json {
  const time = vm.timeCreated;
  const provisioning: Json =
    vm.provisioningState === 'Failed'
      ? {
          code: `ProvisioningState/failed/${vm.lastFailureCode ?? 'InternalExecutionError'}`,
          level: 'Error',
          displayStatus: 'Provisioning failed',
          time,
        }
      : {
          code: `ProvisioningState/${vm.provisioningState.toLowerCase()}`,
          level: 'Info',
          displayStatus: vm.provisioningState === 'Succeeded' ? 'Provisioning succeeded' : vm.provisioningState,
          time,
        };
  const diskStatus = (d: VmDiskRef): Json => ({
    name: sim.state.disks[d.diskId]?.name ?? d.name,
    statuses: [{ code: 'ProvisioningState/succeeded', level: 'Info', displayStatus: 'Provisioning succeeded', time }],
  });
  const view: Json = {
    hyperVGeneration: vm.hyperVGeneration,
    disks: [vm.osDisk, ...vm.dataDisks].map(diskStatus),
    statuses: [provisioning, { code: `PowerState/${vm.powerState}`, level: 'Info', displayStatus: POWER_DISPLAY[vm.powerState] }],
  };
  if (vm.powerState === 'running') {
    view.computerName = vm.name;
    view.vmAgent = agent?.ready
      ? {
          vmAgentVersion: '2.13.1.1',
          statuses: [
            {
              code: 'ProvisioningState/succeeded',
              level: 'Info',
              displayStatus: 'Ready',
              message: 'Guest Agent is running',
              time: nowIso(),
            },
          ],
        }
      : {
          vmAgentVersion: 'Unknown',
          statuses: [
            {
              code: 'ProvisioningState/Unavailable',
              level: 'Warning',
              displayStatus: 'Not Ready',
              message: 'VM Agent is unresponsive.',
              time: nowIso(),
            },
          ],
        };
  }
  return view;
}

export function renderVmSize(z: VmSizeInfo): Json {
  return {
    name: z.name,
    numberOfCores: z.vCPUs,
    osDiskSizeInMB: 1047552,
    resourceDiskSizeInMB: z.resourceDiskSizeInMB,
    memoryInMB: z.memoryInMB,
    maxDataDiskCount: z.maxDataDiskCount,
  };
}

export function listByType(sim: ArmSim, type: string, rgName: string | undefined): Json[] | undefined {
  const inRg = (r: { resourceGroup: string }) => rgName === undefined || key(r.resourceGroup) === key(rgName);
  if (type === 'microsoft.compute/disks')
    return Object.values(sim.state.disks)
      .filter(inRg)
      .map((d) => renderDisk(sim, d));
  if (type === 'microsoft.compute/virtualmachines') {
    return Object.values(sim.state.vms)
      .filter(inRg)
      .map((v) => renderVm(sim, v, false));
  }
  if (type === 'microsoft.network/networkinterfaces')
    return Object.values(sim.state.nics)
      .filter(inRg)
      .map((n) => renderNic(sim, n));
  return undefined;
}

function invalidLocation(name: string, existing: string, requested: string, rg: string): ArmError {
  return new ArmError(
    409,
    'InvalidResourceLocation',
    `The resource '${name}' already exists in location '${existing}' in resource group '${rg}'. A resource with the same name cannot be created in location '${normLocation(requested)}'. Please select a new resource name.`,
  );
}

function enumOrThrow<T extends string>(v: string | undefined, allowed: readonly T[], where: string): T | undefined {
  if (v === undefined) return undefined;
  const e = enumValue(v, allowed);
  if (!e)
    throw invalidParameter(
      `The value '${v}' of parameter '${where}' is not allowed. Allowed values are ${allowed.map((a) => `'${a}'`).join(', ')}.`,
      where,
    );
  return e;
}
