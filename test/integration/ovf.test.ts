import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  getRestorePoint,
  importOvaRestorePoint,
  importOvfRestorePoint,
  listRestorePoints,
  readDiskBlocks,
  type RestorePoint,
} from '../../src/repository';

const MiB = 1024 * 1024;
const qemuImg = (...args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

let workDir: string;
let ovfDir: string;
/** sha256 of each disk's raw content, by disk index (qemu-img convert -O raw of the VMDK). */
const expectedSha: string[] = [];

const envelope = (opts: { doctype?: string } = {}) => `<?xml version="1.0" encoding="UTF-8"?>
${opts.doctype ?? ''}<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="data.vmdk" ovf:id="file2"/>
    <File ovf:href="boot.vmdk" ovf:id="file1"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="8388608"/>
    <Disk ovf:capacity="4194304" ovf:diskId="vmdisk2" ovf:fileRef="file2"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
    <Disk ovf:capacity="2" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk3"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"/>
    <Network ovf:name="Backup"/>
  </NetworkSection>
  <VirtualSystem ovf:id="ignored-id">
    <Info>A virtual machine</Info>
    <Name>app01 &amp; co</Name>
    <OperatingSystemSection ovf:id="112" vmw:osType="windows2019srv_64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName><vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType></System>
      <Item><rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits><rasd:ElementName>4 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>6144MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>6144</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>SCSI controller 0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogicsas</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.thinProvisioned" vmw:value="false"/></Item>
      <Item><rasd:AddressOnParent>1</rasd:AddressOnParent><rasd:ElementName>Hard disk 2</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk2</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.thinProvisioned" vmw:value="true"/></Item>
      <Item><rasd:AddressOnParent>2</rasd:AddressOnParent><rasd:ElementName>Scratch</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk3</rasd:HostResource><rasd:InstanceID>6</rasd:InstanceID><rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>00:50:56:AB:CD:01</rasd:Address><rasd:AddressOnParent>7</rasd:AddressOnParent><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection><rasd:ElementName>Network adapter 1</rasd:ElementName><rasd:InstanceID>7</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>8</rasd:AddressOnParent><rasd:Connection>Backup</rasd:Connection><rasd:ElementName>Network adapter 2</rasd:ElementName>
        <rasd:InstanceID>8</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="cpuHotAddEnabled" vmw:value="false"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`;

const sha256 = (buf: Buffer): string => createHash('sha256').update(buf).digest('hex');

async function restoredSha(repo: string, rp: RestorePoint, diskIndex: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const block of readDiskBlocks(repo, rp, diskIndex)) hash.update(block.data ?? Buffer.alloc(block.length));
  return hash.digest('hex');
}

/** Writes vm.mf for the files of a folder. */
async function writeManifest(dir: string, names: string[], algorithm: 'SHA256' | 'SHA1' = 'SHA256'): Promise<void> {
  const lines: string[] = [];
  for (const name of names) {
    const digest = createHash(algorithm.toLowerCase())
      .update(await fs.readFile(path.join(dir, name)))
      .digest('hex');
    lines.push(`${algorithm}(${name})= ${digest}`);
  }
  await fs.writeFile(path.join(dir, 'vm.mf'), `${lines.join('\n')}\n`);
}

before(async () => {
  workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmrestore-ovf-'));
  ovfDir = path.join(workDir, 'ovf');
  await fs.mkdir(ovfDir);
  const contents = [
    Buffer.concat([randomBytes(2 * MiB), Buffer.alloc(3 * MiB), randomBytes(MiB), Buffer.alloc(2 * MiB)]),
    Buffer.concat([Buffer.alloc(MiB), randomBytes(3 * MiB)]),
  ];
  for (const [i, name] of ['boot', 'data'].entries()) {
    const raw = path.join(workDir, `${name}.raw`);
    await fs.writeFile(raw, contents[i]);
    qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, path.join(ovfDir, `${name}.vmdk`));
    const reference = path.join(workDir, `${name}.ref`);
    qemuImg('convert', '-f', 'vmdk', '-O', 'raw', path.join(ovfDir, `${name}.vmdk`), reference);
    expectedSha[i] = sha256(await fs.readFile(reference));
  }
  expectedSha[2] = sha256(Buffer.alloc(2 * MiB));
  await fs.writeFile(path.join(ovfDir, 'vm.ovf'), envelope());
  await writeManifest(ovfDir, ['vm.ovf', 'data.vmdk', 'boot.vmdk']);
});
after(async () => {
  await fs.rm(workDir, { recursive: true, force: true });
});

let repoCounter = 0;
const freshRepo = () => path.join(workDir, `repo-${++repoCounter}`);

async function assertImportedVm(repo: string, restorePointId: string): Promise<void> {
  const rp = await getRestorePoint(repo, restorePointId);
  assert.deepEqual(rp.vm, {
    name: 'app01 & co',
    guestOs: 'windows',
    firmware: 'efi',
    cpus: 4,
    memoryMiB: 6144,
    nics: [{ network: 'VM Network', macAddress: '00:50:56:ab:cd:01' }, { network: 'Backup' }],
    disks: [
      { index: 0, label: 'Hard disk 1', capacityBytes: 8 * MiB, provisioning: 'thick' },
      { index: 1, label: 'Hard disk 2', capacityBytes: 4 * MiB, provisioning: 'thin' },
      { index: 2, label: 'Scratch', capacityBytes: 2 * MiB, provisioning: 'thin' },
    ],
  });
  for (const i of [0, 1, 2]) assert.equal(await restoredSha(repo, rp, i), expectedSha[i], `disk ${i} sha256`);
  assert.equal(
    rp.disks[2].blocks.every((b) => b === null),
    true,
    'the blank disk stores nothing',
  );
  assert.ok(rp.disks[0].blocks.filter((b) => b === null).length >= 4, 'holes of the boot disk stay holes');
}

describe('OVF and OVA import', () => {
  it('imports an OVF folder: config from the envelope, disks byte-identical, manifest checked', async () => {
    const repo = freshRepo();
    const res = await importOvfRestorePoint(repo, path.join(ovfDir, 'vm.ovf'));
    await assertImportedVm(repo, res.restorePointId);
  });

  it('imports an OVA read as one stream, in ustar and GNU tar formats', async () => {
    for (const format of ['ustar', 'gnu', 'pax']) {
      const ova = path.join(workDir, `vm-${format}.ova`);
      execFileSync('tar', [`--format=${format}`, '-cf', ova, '-C', ovfDir, 'vm.ovf', 'vm.mf', 'data.vmdk', 'boot.vmdk']);
      const repo = freshRepo();
      const res = await importOvaRestorePoint(repo, ova);
      await assertImportedVm(repo, res.restorePointId);
    }
  });

  it('checks SHA1 manifests and a manifest placed after the disks', async () => {
    const dir = path.join(workDir, 'sha1');
    await fs.cp(ovfDir, dir, { recursive: true });
    await writeManifest(dir, ['vm.ovf', 'boot.vmdk', 'data.vmdk'], 'SHA1');
    const ova = path.join(workDir, 'sha1.ova');
    execFileSync('tar', ['-cf', ova, '-C', dir, 'vm.ovf', 'data.vmdk', 'boot.vmdk', 'vm.mf']);
    const repo = freshRepo();
    await assertImportedVm(repo, (await importOvaRestorePoint(repo, ova)).restorePointId);
  });

  it('refuses a disk whose digest does not match the manifest, and saves no restore point', async () => {
    const dir = path.join(workDir, 'bad-digest');
    await fs.cp(ovfDir, dir, { recursive: true });
    const manifest = await fs.readFile(path.join(dir, 'vm.mf'), 'utf8');
    await fs.writeFile(
      path.join(dir, 'vm.mf'),
      manifest.replace(/SHA256\(boot\.vmdk\)= ([0-9a-f])/, (_m, c: string) => `SHA256(boot.vmdk)= ${c === '0' ? '1' : '0'}`),
    );
    const repo = freshRepo();
    await assert.rejects(
      importOvfRestorePoint(repo, path.join(dir, 'vm.ovf')),
      /manifest .*vm\.mf: boot\.vmdk has SHA256 [0-9a-f]+, but the manifest says/,
    );
    const ova = path.join(workDir, 'bad-digest.ova');
    execFileSync('tar', ['-cf', ova, '-C', dir, 'vm.ovf', 'vm.mf', 'data.vmdk', 'boot.vmdk']);
    await assert.rejects(importOvaRestorePoint(repo, ova), /boot\.vmdk has SHA256 [0-9a-f]+, but the manifest says/);
    assert.deepEqual(await listRestorePoints(repo), []);
  });

  it('refuses DTDs and entities, an OVA whose first member is not the descriptor, and disks out of order', async () => {
    const dir = path.join(workDir, 'hostile');
    await fs.cp(ovfDir, dir, { recursive: true });
    await fs.rm(path.join(dir, 'vm.mf'));
    await fs.writeFile(path.join(dir, 'vm.ovf'), envelope({ doctype: '<!DOCTYPE Envelope [<!ENTITY x "y">]>\n' }));
    const repo = freshRepo();
    await assert.rejects(
      importOvfRestorePoint(repo, path.join(dir, 'vm.ovf')),
      /OVF descriptor .*vm\.ovf: declares a DTD or entities, which are refused/,
    );
    await fs.writeFile(path.join(dir, 'vm.ovf'), envelope());
    const first = path.join(workDir, 'disk-first.ova');
    execFileSync('tar', ['-cf', first, '-C', dir, 'boot.vmdk', 'vm.ovf', 'data.vmdk']);
    await assert.rejects(importOvaRestorePoint(repo, first), /the first member must be the OVF descriptor \(found 'boot\.vmdk'\)/);
    const swapped = path.join(workDir, 'swapped.ova');
    execFileSync('tar', ['-cf', swapped, '-C', dir, 'vm.ovf', 'boot.vmdk', 'data.vmdk']);
    await assert.rejects(
      importOvaRestorePoint(repo, swapped),
      /member 'boot\.vmdk' comes before 'data\.vmdk'; the disks must be in References order/,
    );
    const truncated = path.join(workDir, 'truncated.ova');
    execFileSync('tar', ['-cf', truncated, '-C', dir, 'vm.ovf', 'data.vmdk', 'boot.vmdk']);
    await fs.truncate(truncated, (await fs.stat(truncated)).size - 1024 * 1024);
    await assert.rejects(importOvaRestorePoint(repo, truncated), /boot\.vmdk.*(truncated|ends at)/);
    assert.deepEqual(await listRestorePoints(repo), []);
  });
});
