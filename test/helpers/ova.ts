import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';

export interface BuiltOva {
  ova: string;
  /** sha256 of each disk as qemu-img convert -O raw reads its VMDK, by disk index. */
  diskSha256: string[];
}

/**
 * An OVA as VMware writes them: an OVF 1.0 envelope, a SHA256 manifest, and streamOptimized VMDKs made by
 * qemu-img from the given raw contents, tarred in spec order (descriptor, manifest, disks).
 */
export async function buildOva(
  dir: string,
  vm: { name: string; cpus: number; memoryMiB: number; network: string; firmware: 'bios' | 'efi'; disks: Buffer[] },
): Promise<BuiltOva> {
  await fs.mkdir(dir, { recursive: true });
  const diskSha256: string[] = [];
  const files: string[] = [];
  for (const [i, content] of vm.disks.entries()) {
    const raw = path.join(dir, `disk${i}.raw`);
    await fs.writeFile(raw, content);
    const vmdk = `${vm.name}-disk${i}.vmdk`;
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, path.join(dir, vmdk)]);
    const reference = path.join(dir, `disk${i}.ref`);
    execFileSync('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', path.join(dir, vmdk), reference]);
    diskSha256.push(
      createHash('sha256')
        .update(await fs.readFile(reference))
        .digest('hex'),
    );
    await fs.rm(raw);
    await fs.rm(reference);
    files.push(vmdk);
  }
  const rasd = (fields: Record<string, string>) =>
    Object.entries(fields)
      .map(([k, v]) => `<rasd:${k}>${v}</rasd:${k}>`)
      .join('');
  const ovf = `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>${files.map((f, i) => `<File ovf:href="${f}" ovf:id="file${i}"/>`).join('')}</References>
  <DiskSection><Info>Virtual disk information</Info>${vm.disks
    .map(
      (d, i) =>
        `<Disk ovf:capacity="${d.length}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk${i}" ovf:fileRef="file${i}" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>`,
    )
    .join('')}</DiskSection>
  <NetworkSection><Info>Networks</Info><Network ovf:name="${vm.network}"/></NetworkSection>
  <VirtualSystem ovf:id="${vm.name}"><Info>A virtual machine</Info><Name>${vm.name}</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest"><Info>Guest OS</Info></OperatingSystemSection>
    <VirtualHardwareSection><Info>Virtual hardware</Info>
      <Item>${rasd({ ElementName: 'CPUs', InstanceID: '1', ResourceType: '3', VirtualQuantity: String(vm.cpus) })}</Item>
      <Item>${rasd({ AllocationUnits: 'byte * 2^20', ElementName: 'Memory', InstanceID: '2', ResourceType: '4', VirtualQuantity: String(vm.memoryMiB) })}</Item>
      <Item>${rasd({ ElementName: 'SCSI controller 0', InstanceID: '3', ResourceSubType: 'lsilogic', ResourceType: '6' })}</Item>
      ${vm.disks
        .map(
          (_d, i) =>
            `<Item>${rasd({ AddressOnParent: String(i), ElementName: `Hard disk ${i + 1}`, HostResource: `ovf:/disk/vmdisk${i}`, InstanceID: String(10 + i), Parent: '3', ResourceType: '17' })}<vmw:Config ovf:required="false" vmw:key="backing.thinProvisioned" vmw:value="true"/></Item>`,
        )
        .join('\n      ')}
      <Item>${rasd({ Connection: vm.network, ElementName: 'Network adapter 1', InstanceID: '20', ResourceSubType: 'VmxNet3', ResourceType: '10' })}</Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="${vm.firmware}"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`;
  await fs.writeFile(path.join(dir, `${vm.name}.ovf`), ovf);
  const manifest: string[] = [];
  for (const f of [`${vm.name}.ovf`, ...files]) {
    manifest.push(
      `SHA256(${f})= ${createHash('sha256')
        .update(await fs.readFile(path.join(dir, f)))
        .digest('hex')}`,
    );
  }
  await fs.writeFile(path.join(dir, `${vm.name}.mf`), `${manifest.join('\n')}\n`);
  const ova = path.join(dir, `${vm.name}.ova`);
  execFileSync('tar', ['--format=ustar', '-cf', ova, '-C', dir, `${vm.name}.ovf`, `${vm.name}.mf`, ...files]);
  return { ova, diskSha256 };
}
