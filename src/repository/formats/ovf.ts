import { XMLParser } from 'fast-xml-parser';
import { FailureType, RestoreError } from '../../domain/errors';
import type { DiskProvisioning, VmConfig, VmNic } from '../../domain/vm';

/** A disk of the OVF's virtual system: its config, and the file (References href) holding it, if any. */
export interface OvfDisk {
  index: number;
  label: string;
  capacityBytes: number;
  provisioning: DiskProvisioning;
  /** null for a disk the envelope declares without a file (a blank disk). */
  href: string | null;
}

export interface OvfEnvelope {
  vm: VmConfig;
  disks: OvfDisk[];
  /** Every References file, in the order the envelope lists them (an OVA holds them in this order). */
  files: string[];
}

export const MAX_DESCRIPTOR_BYTES = 16 * 1024 * 1024;
const MAX_VM_NAME = 80;
const MAC_ADDRESS = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
/** CIM ResourceType values of the OVF VirtualHardwareSection items we read. */
const RESOURCE_CPU = '3';
const RESOURCE_MEMORY = '4';
const RESOURCE_ETHERNET = '10';
const RESOURCE_DISK = '17';
const ARRAYS = new Set(['File', 'Disk', 'Network', 'Item', 'Config', 'VirtualSystem', 'EthernetPortItem', 'StorageItem']);

type Node = Record<string, unknown>;
const isNode = (v: unknown): v is Node => typeof v === 'object' && v !== null && !Array.isArray(v);
const list = (v: unknown): Node[] => (Array.isArray(v) ? v.filter(isNode) : isNode(v) ? [v] : []);
/** Element text whether or not the element also has attributes. */
const text = (v: unknown): string | undefined => {
  if (typeof v === 'string' || typeof v === 'number') return String(v).trim();
  if (isNode(v) && v['#text'] !== undefined) return String(v['#text']).trim();
  return undefined;
};
const attr = (node: Node, name: string): string | undefined => {
  const v = node[`@${name}`];
  return v === undefined ? undefined : String(v).trim();
};

/** "byte * 2^20", "byte", "MegaBytes" and friends → the multiplier in bytes. */
function allocationUnits(units: string | undefined, where: string, fail: (w: string) => RestoreError): number {
  if (!units) return 1;
  const u = units.replace(/\s+/g, '').toLowerCase();
  const m = /^byte(?:\*(\d+)\^(\d+))?$/.exec(u);
  if (m) return m[1] ? Number(m[1]) ** Number(m[2]) : 1;
  const named: Record<string, number> = { kilobytes: 1024, megabytes: 1024 ** 2, gigabytes: 1024 ** 3, terabytes: 1024 ** 4 };
  if (named[u]) return named[u];
  throw fail(`${where} allocation units '${units}' are not understood`);
}

/**
 * Reads an OVF envelope (1.x or 2.x) into a VM config. DTDs and entity declarations are refused before
 * parsing; a collection of several virtual systems is refused.
 */
export function parseOvf(xml: string, label: string): OvfEnvelope {
  const fail = (what: string) => new RestoreError(FailureType.InvalidRequest, `OVF descriptor ${label}: ${what}`);
  if (/<!DOCTYPE|<!ENTITY/i.test(xml)) throw fail('declares a DTD or entities, which are refused');
  let doc: Node;
  try {
    const parser = new XMLParser({
      ignoreAttributes: false,
      attributeNamePrefix: '@',
      removeNSPrefix: true,
      parseTagValue: false,
      parseAttributeValue: false,
      // Only the predefined XML entities remain to expand: declarations were refused above.
      processEntities: true,
      htmlEntities: false,
      isArray: (name) => ARRAYS.has(name),
    });
    doc = parser.parse(xml, true) as Node;
  } catch (err) {
    throw fail(`is not well-formed XML: ${(err as Error).message}`);
  }
  const envelope = doc.Envelope;
  if (!isNode(envelope)) throw fail('has no Envelope element');
  if (envelope.VirtualSystemCollection) throw fail('holds a VirtualSystemCollection; import one virtual system at a time');

  const files = new Map<string, string>();
  const fileOrder: string[] = [];
  for (const file of list(isNode(envelope.References) ? envelope.References.File : undefined)) {
    const id = attr(file, 'id');
    const href = attr(file, 'href');
    if (!id || !href) throw fail('References has a File without id or href');
    if (href.includes('/') || href.includes('\\') || href === '..' || href === '.' || /^[a-z]+:/i.test(href)) {
      throw fail(`File '${id}' href '${href}' is not a plain file name next to the descriptor`);
    }
    if (attr(file, 'compression')) throw fail(`File '${id}' is ${attr(file, 'compression')}-compressed, which is not supported`);
    files.set(id, href);
    fileOrder.push(href);
  }
  const diskDecls = new Map<string, Node>();
  for (const disk of list(isNode(envelope.DiskSection) ? envelope.DiskSection.Disk : undefined)) {
    const id = attr(disk, 'diskId');
    if (!id) throw fail('DiskSection has a Disk without diskId');
    diskDecls.set(id, disk);
  }

  const systems = list(envelope.VirtualSystem);
  if (systems.length !== 1) throw fail(`has ${systems.length} VirtualSystem elements (expected 1)`);
  const system = systems[0];
  const name = (text(system.Name) || attr(system, 'id') || '').trim();
  if (!name) throw fail('VirtualSystem has no Name or id');
  if (name.length > MAX_VM_NAME) throw fail(`VirtualSystem name '${name}' is longer than ${MAX_VM_NAME} characters`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) throw fail(`VirtualSystem name '${name}' contains control characters`);

  const os = isNode(system.OperatingSystemSection) ? system.OperatingSystemSection : {};
  const osType = attr(os, 'osType') ?? '';
  const osDescription = text(os.Description) ?? '';
  const guestOs = /^win/i.test(osType) || /windows/i.test(osDescription) ? 'windows' : 'linux';

  const hardware = list(system.VirtualHardwareSection)[0];
  if (!hardware) throw fail('VirtualSystem has no VirtualHardwareSection');
  const configs = list(hardware.Config);
  const firmware = configs.some((c) => attr(c, 'key') === 'firmware' && attr(c, 'value')?.toLowerCase() === 'efi') ? 'efi' : 'bios';

  const items = [...list(hardware.Item), ...list(hardware.EthernetPortItem), ...list(hardware.StorageItem)];
  const resource = (item: Node) => text(item.ResourceType);
  const quantity = (item: Node, what: string): number => {
    const q = Number(text(item.VirtualQuantity));
    if (!Number.isSafeInteger(q) || q <= 0)
      throw fail(`${what} item has VirtualQuantity '${text(item.VirtualQuantity)}', not a positive integer`);
    return q;
  };
  const cpuItem = items.find((i) => resource(i) === RESOURCE_CPU);
  if (!cpuItem) throw fail('VirtualHardwareSection has no CPU item (ResourceType 3)');
  const cpus = quantity(cpuItem, 'CPU');
  if (cpus > 768) throw fail(`CPU count ${cpus} is more than 768`);
  const memoryItem = items.find((i) => resource(i) === RESOURCE_MEMORY);
  if (!memoryItem) throw fail('VirtualHardwareSection has no memory item (ResourceType 4)');
  const memoryBytes = quantity(memoryItem, 'memory') * allocationUnits(text(memoryItem.AllocationUnits) ?? 'byte * 2^20', 'memory', fail);
  const memoryMiB = Math.ceil(memoryBytes / (1024 * 1024));
  if (memoryMiB < 4 || memoryMiB > 24 * 1024 * 1024) throw fail(`memory ${memoryMiB} MiB is out of range`);

  const nics: VmNic[] = items
    .filter((i) => resource(i) === RESOURCE_ETHERNET)
    .map((i, n) => {
      const network = text(i.Connection);
      if (!network) throw fail(`network adapter ${n + 1} has no Connection (network name)`);
      const mac = text(i.Address);
      return mac && MAC_ADDRESS.test(mac) ? { network, macAddress: mac.toLowerCase() } : { network };
    });

  const disks: OvfDisk[] = items
    .filter((i) => resource(i) === RESOURCE_DISK)
    .map((item, index) => {
      const host = text(item.HostResource) ?? '';
      const id = /^(?:ovf:)?\/disk\/(.+)$/.exec(host)?.[1];
      const where = `disk item ${index + 1} ('${text(item.ElementName) ?? host}')`;
      if (!id) throw fail(`${where} HostResource '${host}' does not name a disk of the DiskSection`);
      const decl = diskDecls.get(id);
      if (!decl) throw fail(`${where} refers to disk '${id}', which the DiskSection does not declare`);
      const capacity = Number(attr(decl, 'capacity'));
      const capacityBytes = capacity * allocationUnits(attr(decl, 'capacityAllocationUnits'), `disk '${id}' capacity`, fail);
      if (!Number.isSafeInteger(capacityBytes) || capacityBytes <= 0 || capacityBytes % 512 !== 0) {
        throw fail(`disk '${id}' capacity '${attr(decl, 'capacity')}' is not a positive multiple of 512 bytes`);
      }
      const fileRef = attr(decl, 'fileRef');
      const href = fileRef === undefined ? null : files.get(fileRef);
      if (href === undefined) throw fail(`disk '${id}' fileRef '${fileRef}' is not in References`);
      const thin = list(item.Config).find((c) => attr(c, 'key') === 'backing.thinProvisioned');
      const populated = Number(attr(decl, 'populatedSize'));
      const provisioning: DiskProvisioning = thin
        ? attr(thin, 'value')?.toLowerCase() === 'true'
          ? 'thin'
          : 'thick'
        : Number.isFinite(populated) && populated >= capacityBytes
          ? 'thick'
          : 'thin';
      return { index, label: text(item.ElementName) || `Hard disk ${index + 1}`, capacityBytes, provisioning, href };
    });
  if (disks.length === 0) throw fail('VirtualHardwareSection has no disk item (ResourceType 17)');

  return {
    vm: {
      name,
      guestOs,
      firmware,
      cpus,
      memoryMiB,
      nics,
      disks: disks.map((d) => ({ index: d.index, label: d.label, capacityBytes: d.capacityBytes, provisioning: d.provisioning })),
    },
    disks,
    files: fileOrder,
  };
}

export interface ManifestEntry {
  algorithm: 'sha1' | 'sha256' | 'sha512';
  hex: string;
}

/** An OVF manifest: `SHA256(file)= hex` lines, one per file. */
export function parseManifest(textIn: string, label: string): Map<string, ManifestEntry> {
  const entries = new Map<string, ManifestEntry>();
  for (const [n, line] of textIn.split(/\r?\n/).entries()) {
    if (line.trim() === '') continue;
    const m = /^\s*(SHA1|SHA256|SHA512)\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$/.exec(line);
    if (!m)
      throw new RestoreError(
        FailureType.InvalidRequest,
        `manifest ${label} line ${n + 1} is not 'SHA256(file)= digest': ${line.slice(0, 100)}`,
      );
    entries.set(m[2], { algorithm: m[1].toLowerCase() as ManifestEntry['algorithm'], hex: m[3].toLowerCase() });
  }
  return entries;
}
