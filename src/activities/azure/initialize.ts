/** Initialization: the request checked against the target and turned into the plan every later step follows. */
import { helperTaskQueue } from '../../config';
import type { AzurePlan, AzureRestoreRequest } from '../../domain/azure';
import type { LeaseTarget } from '../../domain/lease';
import { FailureType, RestoreError } from '../../domain/errors';
import { diskLayout, openRepository } from '../../repository';
import { vhdBlobOwnership } from '../../azure/pageblob-ownership';
import { assertAzureDiskSize } from '../../azure/vhd';
import { blobUrlForRecord } from '../../azure/blob-url';
import { checkAgentInstaller } from '../../azure/agent-installer';
import { validateAzureRestoreRequest, validateAzureVmName } from '../../domain/validation';
import type { AzureContext } from './context';
import { armFailure, invalid, isNotFound } from './arm-errors';
import { alreadyExists, MAX_TAG_VALUE, ownerOf } from './ownership';

export function parseSubnetId(id: string, subscriptionId: string): { resourceGroup: string; vnet: string; subnet: string } {
  const m =
    /^\/subscriptions\/([^/]+)\/resourceGroups\/([^/]+)\/providers\/Microsoft\.Network\/virtualNetworks\/([^/]+)\/subnets\/([^/]+)$/i.exec(
      typeof id === 'string' ? id : '',
    );
  if (!m)
    invalid(
      `subnet ${JSON.stringify(id)} is not a subnet resource id (/subscriptions/…/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET)`,
    );
  if (m[1].toLowerCase() !== subscriptionId.toLowerCase()) {
    invalid(`subnet '${id}' is in subscription ${m[1]}, not in the target subscription ${subscriptionId}`);
  }
  return { resourceGroup: m[2], vnet: m[3], subnet: m[4] };
}

export function initializeActivities(c: AzureContext) {
  const { config, azure, clients, blobs } = c;
  return {
    async prepareAzureRestore(req: AzureRestoreRequest & { restoreId: string }): Promise<AzurePlan> {
      validateAzureRestoreRequest(req);
      const a = azure();
      if (typeof req.restoreId !== 'string' || req.restoreId.length === 0 || req.restoreId.length > MAX_TAG_VALUE) {
        invalid(
          `restore id must be 1-${MAX_TAG_VALUE} characters (it is stored as an Azure tag value), got ${String(req.restoreId).length}`,
        );
      }
      const rp = await openRepository(config.repository).getRestorePoint(req.restorePointId);
      const osType = rp.vm.guestOs === 'windows' ? 'Windows' : 'Linux';
      validateAzureVmName(req.vmName, osType);
      if (req.skipGuestPreparation && !a.allowTestSwitches)
        invalid('skipGuestPreparation is a test switch; this target does not allow it (only the lab configuration does)');
      const generation = req.generation ?? 1;
      if (generation !== 1 && generation !== 2) invalid(`generation must be 1 or 2, got ${String(generation)}`);
      // A Generation 1 VM boots with BIOS only: a UEFI guest's OS disk is converted after preparation.
      const bootConversion = rp.vm.firmware === 'efi' && generation === 1 ? ('uefi-to-bios' as const) : undefined;
      if (rp.vm.firmware === 'bios' && generation === 2) {
        invalid(`VM '${rp.vm.name}' boots with BIOS; a Generation 2 VM boots with UEFI only: restore with --generation 1`);
      }
      const location = req.location ?? a.location;
      if (!a.locations.includes(location))
        invalid(`location '${location}' is not available for this target (known: ${a.locations.join(', ')})`);
      const resourceGroup = req.resourceGroup ?? a.resourceGroup;
      const { compute, network } = clients();
      try {
        await compute.virtualMachines.list(resourceGroup).next();
      } catch (err) {
        if (isNotFound(err)) invalid(`resource group '${resourceGroup}' not found in subscription ${a.subscriptionId}`);
        armFailure(`listing VMs in resource group '${resourceGroup}'`, err);
      }
      const subnetId = req.subnetId ?? a.subnetId;
      const sn = parseSubnetId(subnetId, a.subscriptionId);
      try {
        await network.subnets.get(sn.resourceGroup, sn.vnet, sn.subnet);
      } catch (err) {
        if (isNotFound(err))
          invalid(`subnet '${sn.subnet}' of virtual network '${sn.vnet}' (resource group '${sn.resourceGroup}') not found`);
        armFailure(`reading subnet ${subnetId}`, err);
      }
      const vmSize = req.vmSize ?? a.defaultVmSize;
      const maxDataDisks = new Map<string, number>();
      for await (const s of compute.virtualMachineSizes.list(location)) if (s.name) maxDataDisks.set(s.name, s.maxDataDiskCount ?? 0);
      const sizes = [...maxDataDisks.keys()];
      if (!sizes.includes(vmSize)) invalid(`VM size '${vmSize}' is not offered in '${location}' (e.g. ${sizes.slice(0, 8).join(', ')})`);
      const dataDiskCount = rp.vm.disks.length - 1;
      if (dataDiskCount > maxDataDisks.get(vmSize)!) {
        throw new RestoreError(
          FailureType.AzureLimit,
          `VM '${rp.vm.name}' has ${dataDiskCount} data disks; size '${vmSize}' allows ${maxDataDisks.get(vmSize)}: choose a larger --vm-size`,
        );
      }
      const hyperVGeneration = generation === 2 ? 'V2' : 'V1';
      const safeId = req.restoreId.replace(/[^A-Za-z0-9-]/g, '-').toLowerCase();
      const disks = rp.vm.disks.map((d) => {
        const os = d.index === 0;
        // The data goes into a page blob first (8 TiB at most) and is imported from there, so that limit
        // applies, not the 32 TiB of a managed disk: refuse here, before the proxy is powered on.
        assertAzureDiskSize(d.capacityBytes, {
          os,
          hyperVGeneration,
          target: 'pageBlob',
          diskName: `${rp.vm.name} disk ${d.index} (${d.label})`,
        });
        const blobName = `${safeId}/disk${d.index}.vhd`;
        const managedDiskName = os ? `${req.vmName}-osdisk` : `${req.vmName}-datadisk${d.index}`;
        return {
          diskIndex: d.index,
          label: d.label,
          capacityBytes: d.capacityBytes,
          nonZeroBytes: diskLayout(rp, d.index).nonZeroBytes,
          os,
          blobName,
          // Without the SAS: the plan is stored in history, and managed-disk import takes the plain URL.
          blobUrl: blobUrlForRecord(blobs().getBlobClient(blobName).url),
          managedDiskName,
          managedDiskId: `/subscriptions/${a.subscriptionId}/resourceGroups/${resourceGroup}/providers/Microsoft.Compute/disks/${managedDiskName}`,
        };
      });
      // Every name this restore will create is checked now, before anything exists: a resource of that name
      // made by anyone else (untagged, or tagged with another restore's id) stops the restore untouched.
      const nicName = `${req.vmName}-nic`;
      const named: Array<{ kind: string; name: string; get: () => Promise<{ tags?: Record<string, string> }> }> = [
        { kind: 'VM', name: req.vmName, get: () => compute.virtualMachines.get(resourceGroup, req.vmName) },
        { kind: 'network interface', name: nicName, get: () => network.networkInterfaces.get(resourceGroup, nicName) },
        ...disks.map((d) => ({
          kind: 'managed disk',
          name: d.managedDiskName,
          get: () => compute.disks.get(resourceGroup, d.managedDiskName),
        })),
      ];
      for (const r of named) {
        const found = await ownerOf(r.get, `${r.kind} '${r.name}'`);
        if (found && found.owner !== req.restoreId) throw alreadyExists(r.kind, r.name, resourceGroup, found.owner);
      }
      for (const d of disks) {
        const blob = await vhdBlobOwnership(blobs().getPageBlobClient(d.blobName), req.restoreId, d.diskIndex);
        if (blob.state === 'foreign') {
          throw new RestoreError(
            FailureType.AlreadyExists,
            `blob '${d.blobName}' in container '${a.container}' already exists and was not created by this restore ` +
              `(${blob.owner ? `disk uuid ${blob.owner}` : 'no vmrestore metadata'}); it is left untouched`,
          );
        }
      }
      let proxy: LeaseTarget | undefined;
      if (req.proxy) {
        const p = a.proxies.find((x) => x.name === req.proxy);
        if (!p) invalid(`Azure proxy '${req.proxy}' is not configured (known: ${a.proxies.map((x) => x.name).join(', ') || 'none'})`);
        proxy = {
          kind: 'proxy',
          name: p.name,
          resourceGroup: p.resourceGroup,
          vmName: p.vmName,
          idleTimeoutMs: p.idleTimeoutSeconds * 1000,
        };
      }
      let helper: LeaseTarget | undefined;
      let helperQueue: string | undefined;
      if (osType === 'Linux') {
        const h = a.helpers[location];
        if (!h) invalid(`no helper appliance is configured for location '${location}' (Linux restores prepare disks on it)`);
        let helperSize: string | undefined;
        try {
          helperSize = (await compute.virtualMachines.get(h.resourceGroup, h.vmName)).hardwareProfile?.vmSize;
        } catch (err) {
          if (isNotFound(err)) invalid(`helper appliance VM '${h.vmName}' (resource group '${h.resourceGroup}') not found`);
          armFailure(`reading helper appliance VM '${h.vmName}'`, err);
        }
        // Every disk of the restore is attached to the helper at once, so they must fit its data-disk slots.
        const slots = helperSize === undefined ? undefined : maxDataDisks.get(helperSize);
        if (slots !== undefined && rp.vm.disks.length > slots) {
          throw new RestoreError(
            FailureType.AzureLimit,
            `VM '${rp.vm.name}' has ${rp.vm.disks.length} disks; helper appliance '${h.vmName}' (${helperSize}) takes at most ${slots} data disks`,
          );
        }
        helper = {
          kind: 'helper',
          name: `${location}-${h.vmName}`,
          resourceGroup: h.resourceGroup,
          vmName: h.vmName,
          idleTimeoutMs: h.idleTimeoutSeconds * 1000,
          slots,
        };
        helperQueue = helperTaskQueue(config, location, h);
      }
      return {
        restoreId: req.restoreId,
        restorePointId: rp.id,
        vm: rp.vm,
        vmName: req.vmName,
        subscriptionId: a.subscriptionId,
        resourceGroup,
        location,
        vmSize,
        subnetId,
        generation,
        bootConversion,
        osType,
        container: a.container,
        storageAccountId: a.storageAccountId,
        nicName,
        proxy,
        helper,
        helperTaskQueue: helperQueue,
        disks,
        keepOnFailure: req.keepOnFailure ?? false,
        agentInstaller: osType === 'Windows' && a.windowsAgentInstaller ? await checkAgentInstaller(a.windowsAgentInstaller) : undefined,
        ...(req.skipGuestPreparation ? { skipGuestPreparation: true } : {}),
      };
    },
  };
}
