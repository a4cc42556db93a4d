/** Microsoft.Compute/disks: managed disks, incl. VHD import from a page blob, with the validation CRP applies. */

import type { PageBlobClient } from '@azure/storage-blob';
import { blobPathInAccount } from '../blobs';
import { checkPutPreconditions, methodNotAllowed, normLocation, type Reply, type ReqCtx, unknownRoute } from '../common';
import { activeGrant, grantAccess, revokeAccess } from './disk-access';
import { ArmError, badRequest, invalidParameter, missingParameter, operationNotAllowed, resourceNotFound } from '../errors';
import { type DiskRec, type HyperVGeneration, key, type OsType } from '../state';
import {
  canonicalJson,
  checkResourceName,
  enumValue,
  type Json,
  mergePatch,
  nowIso,
  objectAt,
  optNumber,
  optObject,
  optString,
  optTags,
  parseResourceId,
  uuid,
  withoutKeys,
} from '../util';
import { checkVhdBlobSize, checkVhdFooter, parseVhdFooter, type VhdProblem } from '../vhd';
import type { SimContext } from '../context';
import { COMPUTE, diskSku, enumOrThrow, GENERATIONS, GiB, invalidLocation, OS_TYPES } from './compute-common';
import type { ResourceProvider } from '../context';
import type { OperationRec } from '../state';
import { inResourceGroup } from '../common';
import { completeAccessOperation } from './disk-access';

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

async function disksRoute(sim: SimContext, ctx: ReqCtx, rg: string, name: string, rest: string[]): Promise<Reply> {
  const { rgName, id, k } = sim.itemTarget(ctx, rg, name, COMPUTE, 'disks');
  if (rest.length > 1) throw unknownRoute(ctx);
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

async function createDisk(sim: SimContext, ctx: ReqCtx, id: string, rgName: string, name: string, spec: DiskSpec): Promise<Reply> {
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
  sim: SimContext,
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

function updateDisk(sim: SimContext, ctx: ReqCtx, d: DiskRec, spec: DiskSpec, patch = false): Reply {
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

export function diskState(sim: SimContext, d: DiskRec): string {
  if (activeGrant(d)) return 'ActiveSAS';
  if (!d.managedBy) return 'Unattached';
  // A disk of a stopped-deallocated VM is 'Reserved': still owned, but not mounted on a host.
  return sim.state.vms[d.managedBy]?.powerState === 'deallocated' ? 'Reserved' : 'Attached';
}

export function renderDisk(sim: SimContext, d: DiskRec): Json {
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
export async function ensureDiskStores(sim: SimContext): Promise<void> {
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

function completeDiskOperation(sim: SimContext, op: OperationRec, failed: boolean): void {
  if (op.kind === 'diskGrantAccess' || op.kind === 'diskRevokeAccess') {
    if (!failed) completeAccessOperation(sim, op);
    return;
  }
  const st = sim.state;
  const d = st.disks[op.resourceKey];
  if (!d) return;
  if (op.kind === 'diskDelete' && !failed) {
    sim.disks.remove(d);
    delete st.disks[op.resourceKey];
    return;
  }
  d.provisioningState = failed ? 'Failed' : 'Succeeded';
  op.result = renderDisk(sim, d);
}

export const disksProvider: ResourceProvider = {
  type: 'microsoft.compute/disks',
  route: disksRoute,
  list: (sim, rgName) =>
    Object.values(sim.state.disks)
      .filter(inResourceGroup(rgName))
      .map((d) => renderDisk(sim, d)),
  completes: ['diskPut', 'diskDelete', 'diskGrantAccess', 'diskRevokeAccess'],
  complete: completeDiskOperation,
};
