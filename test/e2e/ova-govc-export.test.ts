import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { resolvePassword } from '../../src/config';
import { ensureTool, GOVC } from '../../src/lab/binaries';
import { getRestorePoint } from '../../src/repository';
import { startVSphereRestore } from '../../src/client/restore';
import { flatFileName, parseDatastorePath, uploadDatastoreFile, type Vm } from '../../src/vsphere';
import { runCli, sha256File } from '../helpers/env';
import { closeVSphereLab, localFlatFile, openVSphereLab, type VSphereLab } from '../helpers/vsphere';

const MiB = 1024 * 1024;
const run = promisify(execFile);
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
let lab: VSphereLab;
let workDir: string;

/** govc (govmomi's own CLI at the pinned version) against the lab's vCenter. */
async function govc(args: string[]): Promise<string> {
  const p = lab.env.config.vsphere.profiles.lab;
  const { stdout } = await run(ensureTool(GOVC), args, {
    env: { ...process.env, GOVC_URL: p.url, GOVC_USERNAME: p.username, GOVC_PASSWORD: resolvePassword('lab', p), GOVC_INSECURE: '1' },
    maxBuffer: 16 * MiB,
  });
  return stdout;
}

/** The OVF's References in document order: the files an OVA must carry after the descriptor. */
function referencedFiles(ovf: string): string[] {
  return [...ovf.matchAll(/<File ovf:href="([^"]+)"/g)].map((m) => m[1]);
}

describe('an OVA exported by govc from the lab vCenter imports and restores byte for byte (real govc + Temporal + vcsim)', () => {
  const name = `govcova-${randomBytes(3).toString('hex')}`;
  // disk 0: data, a zero gap, data (thick); disk 1: zeros then data (thin).
  const disks = [
    { bytes: Buffer.concat([randomBytes(5 * MiB), Buffer.alloc(6 * MiB), randomBytes(5 * MiB)]), thin: false },
    { bytes: Buffer.concat([Buffer.alloc(3 * MiB), randomBytes(5 * MiB)]), thin: true },
  ];
  let source: Vm | undefined;
  let restored: Vm | undefined;

  before(async () => {
    lab = await openVSphereLab('ova-govc');
    workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vmrestore-govc-ova-'));
  });
  after(async () => {
    await source?.destroy().catch(() => undefined);
    await restored?.destroy().catch(() => undefined);
    await closeVSphereLab(lab);
    await fs.rm(workDir, { recursive: true, force: true });
  });

  it('govc export.ovf → tar → repo import --ova → restore: every disk identical to the source, config carried over', async () => {
    const dc = await lab.vs.datacenter('DC0');
    source = await lab.vs.createVm(dc, {
      name,
      datastore: 'LocalDS_0',
      guestId: 'otherLinux64Guest',
      cpus: 3,
      memoryMiB: 1536,
      firmware: 'efi',
      nics: [{ network: 'VM Network' }],
      disks: disks.map((d) => ({ capacityBytes: d.bytes.length, thinProvisioned: d.thin })),
    });
    const sourceFiles = (await source.config()).disks.map((d) => d.fileName);
    for (const [i, d] of disks.entries()) {
      const { datastore, path: rel } = parseDatastorePath(flatFileName(sourceFiles[i]));
      await uploadDatastoreFile(lab.vs, { datacenter: 'DC0', datastore, path: rel, size: d.bytes.length, body: [d.bytes] });
      assert.equal(await sha256File(localFlatFile(sourceFiles[i])), sha256(d.bytes), `source disk ${i} holds the test's bytes`);
    }

    // govc v0.46.3 has export.ovf (no export.ova): it takes the VM's export lease, downloads each disk and
    // asks the OvfManager for the descriptor; the OVA is then the tar the OVF specification describes.
    const t0 = Date.now();
    await govc(['export.ovf', '-sha', '256', '-vm', name, workDir]);
    const exportSeconds = (Date.now() - t0) / 1000;
    const dir = path.join(workDir, name);
    const ovfText = await fs.readFile(path.join(dir, `${name}.ovf`), 'utf8');
    const diskFiles = referencedFiles(ovfText);
    assert.deepEqual(diskFiles, [`${name}-disk-0.vmdk`, `${name}-disk-1.vmdk`], 'the descriptor references both downloaded disks');
    for (const [i, file] of diskFiles.entries()) {
      // Independent of our readers: qemu-img says what govc downloaded and what it holds.
      const { stdout } = await run('qemu-img', ['info', '--output=json', path.join(dir, file)]);
      const info = JSON.parse(stdout) as {
        format: string;
        'virtual-size': number;
        'format-specific'?: { data?: { 'create-type'?: string } };
      };
      assert.deepEqual(
        [info.format, info['format-specific']?.data?.['create-type'], info['virtual-size']],
        ['vmdk', 'streamOptimized', disks[i].bytes.length],
        `${file} is a stream-optimized VMDK of the disk's capacity`,
      );
      const raw = path.join(workDir, `disk${i}.raw`);
      await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', path.join(dir, file), raw]);
      assert.equal(await sha256File(raw), sha256(disks[i].bytes), `${file} converted by qemu-img equals source disk ${i}`);
      await fs.rm(raw);
    }
    const manifest = await fs.readFile(path.join(dir, `${name}.mf`), 'utf8');
    assert.match(manifest, new RegExp(`^SHA256\\(${name}\\.ovf\\)= [0-9a-f]{64}$`, 'm'), 'govc wrote a SHA256 manifest');

    const ova = path.join(workDir, `${name}.ova`);
    await run('tar', ['--format=ustar', '-cf', ova, '-C', dir, `${name}.ovf`, `${name}.mf`, ...diskFiles]);

    const cli = await runCli(lab.env.taskQueue, ['repo', 'import', '--ova', ova, '--json']);
    assert.equal(cli.code, 0, `repo import --ova failed: ${cli.stderr}`);
    const { restorePointId } = JSON.parse(cli.stdout.trim().split('\n').pop()!) as { restorePointId: string };
    const rp = await getRestorePoint(lab.env.config.repository.path, restorePointId);
    assert.deepEqual(
      {
        name: rp.vm.name,
        cpus: rp.vm.cpus,
        memoryMiB: rp.vm.memoryMiB,
        firmware: rp.vm.firmware,
        nics: rp.vm.nics.map((n) => n.network),
        disks: rp.vm.disks.map((d) => [d.capacityBytes, d.provisioning]),
      },
      {
        name,
        cpus: 3,
        memoryMiB: 1536,
        firmware: 'efi',
        nics: ['VM Network'],
        disks: disks.map((d) => [d.bytes.length, d.thin ? 'thin' : 'thick']),
      },
      'the restore point carries the config from the OVF vCenter described',
    );

    const vmName = `${name}-back`;
    const handle = await startVSphereRestore(
      lab.env.client,
      { restorePointId, vmName, transport: 'nbd' },
      { taskQueue: lab.env.taskQueue },
    );
    const result = await handle.result();
    restored = (await lab.vs.findVmByName(dc, result.vmName)) ?? undefined;
    assert.ok(restored, `VM ${result.vmName} exists`);
    const cfg = await restored.config();
    assert.deepEqual(
      { cpus: cfg.cpus, memoryMiB: cfg.memoryMiB, firmware: cfg.firmware, disks: cfg.disks.map((d) => d.capacityBytes) },
      { cpus: 3, memoryMiB: 1536, firmware: 'efi', disks: disks.map((d) => d.bytes.length) },
    );
    for (const [i, disk] of cfg.disks.entries()) {
      assert.notEqual(disk.fileName, sourceFiles[i], `disk ${i} is a new file`);
      assert.equal(
        await sha256File(localFlatFile(disk.fileName)),
        await sha256File(localFlatFile(sourceFiles[i])),
        `restored disk ${i} equals source disk ${i} on the datastore`,
      );
    }
    console.log(
      `govc export.ovf of ${disks.length} disks (${(disks[0].bytes.length + disks[1].bytes.length) / MiB} MiB): ${exportSeconds} s`,
    );
  });

  it('ExportVm refuses a powered-on VM with InvalidPowerState, as vCenter does', async () => {
    const dc = await lab.vs.datacenter('DC0');
    const vm = await lab.vs.createVm(dc, {
      name: `${name}-on`,
      datastore: 'LocalDS_0',
      guestId: 'otherLinux64Guest',
      cpus: 1,
      memoryMiB: 64,
      firmware: 'bios',
      nics: [],
      disks: [{ capacityBytes: MiB, thinProvisioned: true }],
    });
    try {
      await vm.powerOn();
      await assert.rejects(govc(['export.ovf', '-vm', `${name}-on`, path.join(workDir, 'on')]), /powered on/);
      await vm.powerOff();
    } finally {
      await vm.destroy().catch(() => undefined);
    }
  });
});
