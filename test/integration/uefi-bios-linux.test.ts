import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RestoreError } from '../../src/domain/errors';
import { bootCodeCoreLba, coreBlocklistStart, GRUB_I386_PC_DIR, isGrubBootCode } from '../../src/guest/disk/grub-bios';
import { planGptToMbr } from '../../src/guest/disk/gpt-to-mbr';
import { convertLinuxUefiToBios } from '../../src/guest/disk/linux-uefi-to-bios';
import { run } from '../../src/guest/exec';
import { Ext4Volume, makeExt4FromTree } from '../../src/guest/linux/ext4';
import { readPartitionTable, writePartitionTable } from '../../src/guest/disk/partition';
import { convertUefiToBios } from '../../src/guest/disk/uefi-to-bios';
import {
  ESP_UUID,
  ROOT_UUID,
  bootUnderSeaBios,
  buildUefiLinuxDisk,
  findBaseTree,
  findBuiltUefiGuest,
  type UefiLinuxDisk,
} from './uefi-bios-fixtures';

const MiB = 1024 * 1024;
let dir: string;

before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'uefi-bios-linux-'));
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function readAt(image: string, offset: number, length: number): Promise<Buffer> {
  const fh = await fsp.open(image, 'r');
  try {
    const b = Buffer.alloc(length);
    await fh.read(b, 0, length, offset);
    return b;
  } finally {
    await fh.close();
  }
}

async function sha(image: string, length: number): Promise<string> {
  return createHash('sha256')
    .update(await readAt(image, 0, length))
    .digest('hex');
}

async function sparse(name: string, size: number): Promise<string> {
  const p = join(dir, name);
  const fh = await fsp.open(p, 'w');
  await fh.truncate(size);
  await fh.close();
  return p;
}

describe('UEFI Linux disk converted to BIOS boot', () => {
  let disk: UefiLinuxDisk;
  let result: Awaited<ReturnType<typeof convertLinuxUefiToBios>>;
  const work = () => join(dir, 'work');

  before(async () => {
    await fsp.mkdir(work(), { recursive: true });
    disk = await buildUefiLinuxDisk(dir, { baseTree: await findBaseTree() });
    result = await convertUefiToBios(disk.imagePath, { osType: 'linux', workDir: work() });
  });

  it('replaces the GPT by an MBR with the same partition sectors, the ESP kept as type 0xEF and the root active', async () => {
    const dump = (await run('sfdisk', ['--dump', disk.imagePath], { env: { LC_ALL: 'C' } })).stdout;
    assert.match(dump, /^label: dos$/m, dump);
    const lines = dump.split('\n').filter((l) => /: start=/.test(l));
    assert.equal(lines.length, 2, dump);
    assert.match(lines[0]!, new RegExp(`start=\\s*${disk.esp.startBytes / 512}, size=\\s*${disk.esp.sizeBytes / 512}, type=ef$`));
    assert.match(
      lines[1]!,
      new RegExp(`start=\\s*${disk.root.startBytes / 512}, size=\\s*${disk.root.sizeBytes / 512}, type=83, bootable$`),
    );
    const table = await readPartitionTable(disk.imagePath);
    assert.equal(table.scheme, 'mbr');
    assert.deepEqual(
      table.partitions.map((p) => [p.index, p.startBytes, p.sizeBytes, p.typeCode, p.bootable]),
      [
        [1, disk.esp.startBytes, disk.esp.sizeBytes, 'ef', false],
        [2, disk.root.startBytes, disk.root.sizeBytes, '83', true],
      ],
    );
    // No stale GPT anywhere: libblkid would otherwise report the disk as GPT or ambiguous.
    const size = (await fsp.stat(disk.imagePath)).size;
    assert.notEqual((await readAt(disk.imagePath, 512, 8)).toString('latin1'), 'EFI PART');
    assert.notEqual((await readAt(disk.imagePath, size - 512, 8)).toString('latin1'), 'EFI PART');
    const blkid = (await run('blkid', ['-p', '-o', 'export', disk.imagePath], { allowExit: [2] })).stdout;
    assert.match(blkid, /^PTTYPE=dos$/m, blkid);
  });

  it('puts GRUB boot.img into the MBR, pointing at core.img in the post-MBR gap', async () => {
    const sector0 = await readAt(disk.imagePath, 0, 512);
    assert.equal(sector0.readUInt16LE(510), 0xaa55);
    const bootImg = await fsp.readFile(join(GRUB_I386_PC_DIR, 'boot.img'));
    assert.ok(isGrubBootCode(sector0, bootImg), 'sector 0 holds GRUB boot.img code');
    assert.equal(bootCodeCoreLba(sector0), 1);
    assert.deepEqual([...sector0.subarray(0x66, 0x68)], [0x90, 0x90], 'drive check patched as for a hard disk');
    const core = await new Ext4Volume(disk.imagePath, disk.root.startBytes).readFile('/boot/grub/i386-pc/core.img');
    assert.ok(core && core.length > 20_000, 'core.img kept in /boot/grub/i386-pc');
    const onDisk = await readAt(disk.imagePath, 512, core.length);
    assert.equal(coreBlocklistStart(onDisk), 2);
    assert.ok(onDisk.equals(core), 'the gap holds core.img byte for byte');
    assert.ok(1 + Math.ceil(core.length / 512) <= disk.esp.startBytes / 512, 'core.img ends before the first partition');
  });

  it('writes a grub.cfg with the root UUID, the newest kernel first, a serial console and no delay', async () => {
    const vol = new Ext4Volume(disk.imagePath, disk.root.startBytes);
    const cfg = (await vol.readText('/boot/grub/grub.cfg'))!;
    assert.match(cfg, new RegExp(`^search --no-floppy --fs-uuid --set=root ${ROOT_UUID}$`, 'm'));
    assert.match(cfg, /^set timeout=0$/m);
    assert.match(cfg, /^serial --unit=0 /m);
    const linux = cfg.split('\n').filter((l) => /^\tlinux /.test(l));
    assert.ok(linux.length >= 1, cfg);
    assert.equal(
      linux[0],
      `\tlinux /boot/vmlinuz-${disk.kernelVersion} root=UUID=${ROOT_UUID} ro net.ifnames=0 console=tty0 console=ttyS0,115200n8`,
    );
    assert.ok(!/quiet|rootdelay/.test(cfg), 'no quiet boot and no rootdelay');
    assert.match(cfg, new RegExp(`^\\tinitrd /boot/initrd.img-${disk.kernelVersion.replace(/[.+]/g, '\\$&')}$`, 'm'));
    const blkid = (
      await run('blkid', ['-p', '-O', String(disk.root.startBytes), '-s', 'UUID', '-o', 'value', disk.imagePath])
    ).stdout.trim();
    assert.equal(blkid, ROOT_UUID, 'the UUID in grub.cfg is the one blkid reads from the root superblock');
  });

  it("copies the host's i386-pc modules into /boot/grub/i386-pc and makes /boot/efi nofail", async () => {
    const vol = new Ext4Volume(disk.imagePath, disk.root.startBytes);
    const mods = (await vol.list('/boot/grub/i386-pc'))!.map((e) => e.name);
    assert.ok(mods.includes('normal.mod') && mods.includes('linux.mod') && mods.includes('moddep.lst'), mods.join(' '));
    assert.ok((await vol.readFile('/boot/grub/i386-pc/normal.mod'))!.equals(await fsp.readFile(join(GRUB_I386_PC_DIR, 'normal.mod'))));
    const fstab = (await vol.readText('/etc/fstab'))!;
    assert.match(fstab, new RegExp(`^UUID=${ESP_UUID}\\s+/boot/efi\\s+vfat\\s+umask=0077,nofail\\s`, 'm'), fstab);
    await vol.fsck();
  });

  it('lists every change with path, reason and digests, and no file contents', () => {
    const paths = result.changes.map((c) => c.path);
    for (const p of ['/boot/grub/grub.cfg', '/boot/grub/i386-pc/', '/etc/fstab'])
      assert.ok(paths.includes(p), `${p} in ${paths.join(', ')}`);
    assert.ok(paths.some((p) => /^disk sectors 0-0 \(MBR\)$/.test(p)));
    assert.ok(paths.some((p) => /\(GRUB core image\)$/.test(p)));
    assert.ok(paths.some((p) => /primary GPT header/.test(p)) && paths.some((p) => /backup GPT/.test(p)));
    for (const c of result.changes) {
      assert.ok(c.description.length > 10, JSON.stringify(c));
      assert.ok(c.diff.length <= 7 && c.diff.every((l) => l.length <= 120), JSON.stringify(c.diff));
    }
    const json = JSON.stringify(result.changes);
    assert.ok(!json.includes('insmod fat'), 'the old grub.cfg is not copied into the change list');
    assert.ok(result.warnings.some((w) => /grub-pc/.test(w)));
  });

  it('leaves an already converted disk alone on a second run', async () => {
    const beforeHash = await sha(disk.imagePath, 2 * MiB);
    const again = await convertUefiToBios(disk.imagePath, { osType: 'linux', workDir: work() });
    assert.deepEqual(again.changes, []);
    assert.match(again.warnings.join(' '), /already boots with BIOS GRUB/);
    assert.equal(await sha(disk.imagePath, 2 * MiB), beforeHash);
  });

  it('boots under SeaBIOS: GRUB runs grub.cfg from the ext4 root and starts the kernel on the serial console', async (t) => {
    const patterns = [`Loading Linux ${disk.kernelVersion} ...`];
    if (disk.bootable) patterns.push('Linux version', 'EXT4-fs (sda2): mounted filesystem');
    else patterns.push('Loading initial ramdisk ...');
    const started = Date.now();
    const boot = await bootUnderSeaBios([disk.imagePath], join(dir, 'serial.log'), patterns, disk.bootable ? 180_000 : 60_000);
    const missing = patterns.filter((p) => !boot.seen.has(p));
    assert.deepEqual(missing, [], `serial log tail:\n${boot.log.slice(-3000)}`);
    t.diagnostic(
      `${disk.bootable ? 'Debian kernel' : 'placeholder kernel'}: ${[...boot.seen].map(([p, ms]) => `${p} at ${(ms / 1000).toFixed(1)} s`).join('; ')} (total ${((Date.now() - started) / 1000).toFixed(1)} s)`,
    );
  });
});

describe('UEFI to BIOS refusals (nothing written)', () => {
  it('refuses a disk beyond 2 TiB', async () => {
    const img = await sparse('big.img', 3 * 1024 * 1024 * MiB);
    await writePartitionTable(img, { scheme: 'gpt', partitions: [{ startBytes: MiB, sizeBytes: 64 * MiB, type: 'linux' }] });
    const h = await sha(img, MiB);
    await assert.rejects(
      planGptToMbr(img),
      (e: Error) => e instanceof RestoreError && /beyond the 2 TiB/.test(e.message) && /Generation 2/.test(e.message),
    );
    assert.equal(await sha(img, MiB), h);
    await fsp.rm(img);
  });

  it('refuses more than four partitions that must stay, and drops the ESP first when that makes four', async () => {
    const img = await sparse('many.img', 64 * MiB);
    const parts = [0, 1, 2, 3, 4].map((i) => ({
      startBytes: (1 + i * 8) * MiB,
      sizeBytes: 8 * MiB,
      type: i === 0 ? ('efi' as const) : ('linux' as const),
    }));
    await writePartitionTable(img, { scheme: 'gpt', partitions: parts });
    const plan = await planGptToMbr(img);
    assert.deepEqual(
      plan.entries.map((e) => e.gptIndex),
      [2, 3, 4, 5],
    );
    assert.equal(plan.dropped[0]!.gptIndex, 1);
    assert.match(plan.dropped[0]!.reason, /EFI system partition/);
    await writePartitionTable(img, {
      scheme: 'gpt',
      partitions: [...parts.slice(1), { startBytes: 41 * MiB, sizeBytes: 8 * MiB, type: 'linux' }],
    });
    await assert.rejects(planGptToMbr(img), /5 partitions must stay \(1 \(Linux filesystem\), .*four primary partitions/);
  });

  it('refuses when the first partition leaves no room for the core image, leaving the disk unchanged', async () => {
    const d = join(dir, 'early');
    await fsp.mkdir(join(d, 'work'), { recursive: true });
    const disk = await buildUefiLinuxDisk(d, { baseTree: null, firstLba: 34 });
    const h = await sha(disk.imagePath, 2 * MiB);
    await assert.rejects(
      convertLinuxUefiToBios(disk.imagePath, { workDir: join(d, 'work') }),
      /starts at sector 34, leaving 33 sectors after the MBR.*needs \d+/,
    );
    assert.equal(await sha(disk.imagePath, 2 * MiB), h);
    assert.equal((await readPartitionTable(disk.imagePath)).scheme, 'gpt');
    await fsp.rm(d, { recursive: true, force: true });
  });

  it('refuses an MBR disk', async () => {
    const img = await sparse('mbr.img', 16 * MiB);
    await writePartitionTable(img, { scheme: 'mbr', partitions: [{ startBytes: MiB, sizeBytes: 8 * MiB, type: 'linux' }] });
    await assert.rejects(convertUefiToBios(img, { osType: 'linux', workDir: dir }), /has an MBR partition table, not GPT/);
  });
});

describe('UEFI Linux disk with a BIOS boot partition and no gap after the GPT', () => {
  it('puts core.img into the former BIOS boot partition, rewrites renumbered and PARTUUID fstab entries, and boots', async () => {
    const d = join(dir, 'biosboot');
    await fsp.mkdir(join(d, 'work'), { recursive: true });
    const disk = await buildUefiLinuxDisk(d, { baseTree: null, biosBootPartition: true });
    const r = await convertLinuxUefiToBios(disk.imagePath, { workDir: join(d, 'work') });

    const table = await readPartitionTable(disk.imagePath);
    assert.deepEqual(
      table.partitions.map((p) => [p.index, p.startBytes / 512, p.typeCode, p.bootable]),
      [
        [1, 34, 'ef', false],
        [2, disk.root.startBytes / 512, '83', true],
      ],
    );
    const sector0 = await readAt(disk.imagePath, 0, 512);
    const biosBootLba = disk.root.startBytes / 512 - 2048;
    assert.equal(bootCodeCoreLba(sector0), biosBootLba, 'boot.img points at the former BIOS boot partition');
    assert.equal(coreBlocklistStart(await readAt(disk.imagePath, biosBootLba * 512, 512)), biosBootLba + 1);
    const fstab = (await new Ext4Volume(disk.imagePath, disk.root.startBytes).readText('/etc/fstab'))!;
    assert.match(fstab, new RegExp(`^UUID=${ROOT_UUID} /\\s`, 'm'), fstab);
    assert.match(fstab, new RegExp(`^UUID=${ESP_UUID}\\s+/boot/efi\\s+vfat\\s+umask=0077,nofail\\s`, 'm'), fstab);
    assert.match(r.warnings.join('\n'), /GPT partition 2 not carried into the MBR: BIOS boot partition/);
    const cfg = (await new Ext4Volume(disk.imagePath, disk.root.startBytes).readText('/boot/grub/grub.cfg'))!;
    assert.ok(cfg.indexOf('Linux 6.1.0-99-amd64') < cfg.indexOf('Linux 5.10.0-9-amd64'), 'newest kernel first');

    // GRUB's prefix search finds the root on MBR partition 2 although the disk numbering changed.
    const boot = await bootUnderSeaBios(
      [disk.imagePath],
      join(d, 'serial.log'),
      ['Loading Linux 6.1.0-99-amd64 ...', 'Loading initial ramdisk ...'],
      90_000,
    );
    assert.equal(boot.seen.size, 2, boot.log.slice(-2000));
    await fsp.rm(d, { recursive: true, force: true });
  });
});

describe('UEFI Linux disk with /boot on its own filesystem', () => {
  it('writes GRUB files into the /boot filesystem, with kernel paths relative to it, and boots GRUB from there', async () => {
    const d = join(dir, 'sepboot');
    await fsp.mkdir(join(d, 'work'), { recursive: true });
    const img = await sparse('sepboot.img', 160 * MiB);
    const esp = { startBytes: MiB, sizeBytes: 16 * MiB, type: 'efi' as const };
    const bootPart = { startBytes: 17 * MiB, sizeBytes: 32 * MiB, type: 'linux' as const };
    const rootPart = { startBytes: 49 * MiB, sizeBytes: 110 * MiB, type: 'linux' as const };
    await writePartitionTable(img, { scheme: 'gpt', partitions: [esp, bootPart, rootPart] });
    const bootUuid = '7d1e0b5c-2f43-4a8e-9c61-0a2b3c4d5e6f';
    const mkfs = async (uuid: string, part: { startBytes: number; sizeBytes: number }, files: Record<string, string>) => {
      const tree = join(d, uuid);
      for (const [f, content] of Object.entries(files)) {
        await fsp.mkdir(join(tree, f, '..'), { recursive: true });
        await fsp.writeFile(join(tree, f), content);
      }
      await makeExt4FromTree(img, { offsetBytes: part.startBytes, sizeBytes: part.sizeBytes, tree, uuid });
    };
    await mkfs(bootUuid, bootPart, {
      'vmlinuz-6.1.0-99-amd64': 'placeholder kernel\n',
      'initrd.img-6.1.0-99-amd64': 'placeholder initrd\n',
    });
    await mkfs(ROOT_UUID, rootPart, {
      'etc/fstab': `UUID=${ROOT_UUID} / ext4 defaults 0 1\nUUID=${bootUuid} /boot ext4 defaults 0 2\nUUID=${ESP_UUID} /boot/efi vfat umask=0077 0 1\n`,
      'etc/os-release': 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
    });

    await convertLinuxUefiToBios(img, { workDir: join(d, 'work') });
    const bootVol = new Ext4Volume(img, bootPart.startBytes);
    const cfg = (await bootVol.readText('/grub/grub.cfg'))!;
    assert.match(cfg, new RegExp(`^search --no-floppy --fs-uuid --set=root ${bootUuid}$`, 'm'));
    assert.match(cfg, new RegExp(`^\\tlinux /vmlinuz-6.1.0-99-amd64 root=UUID=${ROOT_UUID} ro console=tty0 console=ttyS0,115200n8$`, 'm'));
    assert.match(cfg, /^\tinitrd \/initrd.img-6.1.0-99-amd64$/m);
    assert.ok(await bootVol.stat('/grub/i386-pc/normal.mod'));
    assert.equal(await new Ext4Volume(img, rootPart.startBytes).stat('/boot/grub'), null, 'nothing GRUB-related on the root filesystem');
    const table = await readPartitionTable(img);
    assert.deepEqual(
      table.partitions.filter((p) => p.bootable).map((p) => p.startBytes),
      [bootPart.startBytes],
      'the /boot partition is active',
    );
    const boot = await bootUnderSeaBios(
      [img],
      join(d, 'serial.log'),
      ['Loading Linux 6.1.0-99-amd64 ...', 'Loading initial ramdisk ...'],
      90_000,
    );
    assert.equal(boot.seen.size, 2, boot.log.slice(-2000));
    await fsp.rm(d, { recursive: true, force: true });
  });
});

describe("the lab builder's UEFI Debian guest", () => {
  it('converts and boots under SeaBIOS', async (t) => {
    // The guest as the builder made it, without Azure preparation: its fstab names the ESP and the data
    // disk by UUID, so both disks are attached as SCSI disks, OS disk first.
    const guest = await findBuiltUefiGuest();
    const img = join(dir, 'builder-uefi.img');
    await run('cp', ['--sparse=always', guest.osDisk, img]);
    await fsp.mkdir(join(dir, 'work2'), { recursive: true });
    const r = await convertUefiToBios(img, { osType: 'linux', workDir: join(dir, 'work2') });
    assert.ok(r.changes.length > 0);
    const patterns = ['Loading Linux', 'Linux version', 'login:'];
    const boot = await bootUnderSeaBios([img, guest.dataDisk], join(dir, 'serial2.log'), patterns, 240_000);
    assert.deepEqual(
      patterns.filter((p) => !boot.seen.has(p)),
      [],
      boot.log.slice(-3000),
    );
    t.diagnostic([...boot.seen].map(([p, ms]) => `${p} at ${(ms / 1000).toFixed(1)} s`).join('; '));
  });
});
