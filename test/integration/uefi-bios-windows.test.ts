import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { planGptToMbr } from '../../src/guest/disk/gpt-to-mbr';
import { run } from '../../src/guest/exec';
import { PartitionCopy, ntfsCheck, withNtfsMount } from '../../src/guest/windows/ntfs';
import { readPartitionTable, writePartitionTable } from '../../src/guest/disk/partition';
import { getHiveValue, hiveToXml } from '../../src/guest/windows/regf';
import { prepareGuestDiskIsolated } from '../../src/guest/isolation';
import { convertUefiToBios } from '../../src/guest/disk/uefi-to-bios';
import { BOOTMGR_GUID, BcdObjectType, mbrPartitionDevice, parseMbrPartitionDevice, readBcdObjects } from '../../src/guest/windows/bcd';
import { SYSLINUX_MBR } from '../../src/guest/windows/bios-boot';
import { buildWindowsDiskImage, type WindowsDiskImage } from '../../src/lab/images/windows-image';

const MiB = 1024 * 1024;
let dir: string;
before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'uefi-bios-windows-'));
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

const FAKE_BOOTMGR = Buffer.concat([Buffer.from('BOOTMGR placeholder of the test guest\r\n'), Buffer.alloc(4096, 0x5a)]);
const FAKE_MUI = Buffer.from('MUI placeholder\r\n');

/** The demo Windows image as a UEFI (GPT) install, plus the BIOS boot files every Windows carries. */
async function uefiWindowsDisk(name = 'win.img'): Promise<WindowsDiskImage> {
  const img = await buildWindowsDiskImage(join(dir, name), { sizeBytes: 256 * MiB, scheme: 'gpt', hostname: 'WIN-UEFI', usedMiB: 2 });
  const part = join(dir, `ntfs-edit-${name}`);
  const copy = await PartitionCopy.extract(img.imagePath, img.ntfsPartitionOffset, img.ntfsPartitionSize, part);
  await withNtfsMount(part, dir, async (root) => {
    await fsp.mkdir(join(root, 'Windows/Boot/PCAT/en-US'), { recursive: true });
    await fsp.writeFile(join(root, 'Windows/Boot/PCAT/bootmgr'), FAKE_BOOTMGR);
    await fsp.writeFile(join(root, 'Windows/Boot/PCAT/en-US/bootmgr.exe.mui'), FAKE_MUI);
    await fsp.writeFile(join(root, 'Windows/System32/winload.exe'), 'MZ winload placeholder\r\n');
    await fsp.writeFile(join(root, 'Windows/System32/winload.efi'), 'MZ winload.efi placeholder\r\n');
  });
  await copy.writeBack();
  await fsp.rm(part);
  return img;
}

async function ntfsPart(img: WindowsDiskImage, name: string): Promise<string> {
  const p = join(dir, name);
  await PartitionCopy.extract(img.imagePath, img.ntfsPartitionOffset, img.ntfsPartitionSize, p);
  return p;
}

describe('UEFI Windows disk converted to BIOS boot', () => {
  let img: WindowsDiskImage;
  let result: Awaited<ReturnType<typeof convertUefiToBios>>;
  let part: string;
  let bcdPath: string;
  let signature: number;

  before(async () => {
    img = await uefiWindowsDisk();
    result = await convertUefiToBios(img.imagePath, { osType: 'windows', workDir: dir });
    part = await ntfsPart(img, 'after.img');
    bcdPath = join(dir, 'BCD');
    await fsp.writeFile(bcdPath, (await run('ntfscat', [part, '/Boot/BCD'])).stdoutBuffer);
    const dump = (await run('sfdisk', ['--dump', img.imagePath], { env: { LC_ALL: 'C' } })).stdout;
    signature = parseInt(/^label-id: 0x([0-9a-f]+)$/m.exec(dump)![1]!, 16);
  });

  it('has an MBR with the Windows partition active and standard MBR boot code', async () => {
    const dump = (await run('sfdisk', ['--dump', img.imagePath], { env: { LC_ALL: 'C' } })).stdout;
    assert.match(dump, /^label: dos$/m, dump);
    const lines = dump.split('\n').filter((l) => /: start=/.test(l));
    assert.equal(lines.length, 2, dump);
    assert.match(lines[0]!, /start=\s*2048, size=\s*32768, type=ef$/);
    assert.match(
      lines[1]!,
      new RegExp(`start=\\s*${img.ntfsPartitionOffset / 512}, size=\\s*${img.ntfsPartitionSize / 512}, type=7, bootable$`),
    );
    const table = await readPartitionTable(img.imagePath);
    assert.deepEqual(
      table.partitions.filter((p) => p.bootable).map((p) => p.startBytes),
      [img.ntfsPartitionOffset],
    );
    const fh = await fsp.open(img.imagePath, 'r');
    const sector0 = Buffer.alloc(512);
    await fh.read(sector0, 0, 512, 0);
    await fh.close();
    const code = await fsp.readFile(SYSLINUX_MBR);
    assert.ok(sector0.subarray(0, code.length).equals(code), 'MBR code is syslinux mbr.bin');
    assert.equal(sector0.readUInt16LE(510), 0xaa55);
    assert.equal(sector0.readUInt32LE(440), signature);
  });

  it('puts the guest bootmgr at the root and its resources under \\Boot, and the volume stays consistent', async () => {
    const rootList = (await run('ntfsls', [part])).stdout.split('\n');
    assert.ok(rootList.includes('bootmgr') && rootList.includes('Boot'), rootList.join(' '));
    assert.ok((await run('ntfscat', [part, '/bootmgr'])).stdoutBuffer.equals(FAKE_BOOTMGR));
    assert.ok((await run('ntfscat', [part, '/Boot/en-US/bootmgr.exe.mui'])).stdoutBuffer.equals(FAKE_MUI));
    assert.deepEqual(
      (await run('ntfsls', ['-p', '/Boot', part])).stdout
        .split('\n')
        .filter((n) => n && n !== '.' && n !== '..')
        .sort(),
      ['BCD', 'en-US'],
    );
    const check = await ntfsCheck(part);
    assert.ok(check.ok, check.output);
  });

  it('has a BCD with {bootmgr} and one Windows Boot Loader on the MBR partition, read back through hivex', async () => {
    const device = mbrPartitionDevice(signature, img.ntfsPartitionOffset);
    const bm = `\\Objects\\${BOOTMGR_GUID}\\Elements`;
    const defaultLoader = await getHiveValue(bcdPath, `${bm}\\23000003`, 'Element');
    assert.equal(defaultLoader?.type, 'string');
    const loader = (defaultLoader as { value: string }).value;
    assert.match(loader, /^\{[0-9a-f-]{36}\}$/);
    const bmDevice = await getHiveValue(bcdPath, `${bm}\\11000001`, 'Element');
    assert.ok(bmDevice?.type === 'binary' && bmDevice.value.equals(device), JSON.stringify(bmDevice));
    const order = await getHiveValue(bcdPath, `${bm}\\24000001`, 'Element');
    assert.deepEqual(order, { type: 'multiString', value: [loader] });

    const le = `\\Objects\\${loader}\\Elements`;
    assert.deepEqual(await getHiveValue(bcdPath, `\\Objects\\${loader}\\Description`, 'Type'), {
      type: 'dword',
      value: BcdObjectType.osLoader,
    });
    assert.deepEqual(await getHiveValue(bcdPath, `${le}\\12000002`, 'Element'), {
      type: 'string',
      value: '\\Windows\\system32\\winload.exe',
    });
    assert.deepEqual(await getHiveValue(bcdPath, `${le}\\22000002`, 'Element'), { type: 'string', value: '\\Windows' });
    assert.deepEqual(await getHiveValue(bcdPath, `${le}\\12000004`, 'Element'), {
      type: 'string',
      value: 'Windows Server 2022 Datacenter',
    });
    for (const el of ['11000001', '21000001']) {
      const v = await getHiveValue(bcdPath, `${le}\\${el}`, 'Element');
      assert.ok(v?.type === 'binary', el);
      assert.deepEqual(parseMbrPartitionDevice(v.value), { diskSignature: signature, partitionOffsetBytes: img.ntfsPartitionOffset }, el);
    }
    assert.deepEqual(await getHiveValue(bcdPath, '\\Description', 'KeyName'), { type: 'string', value: 'BCD00000000' });

    const xml = await hiveToXml(bcdPath);
    assert.match(xml, /NewStoreRoot/);
    assert.match(xml, new RegExp(BOOTMGR_GUID.replace(/[{}]/g, '\\$&')));
    const objects = await readBcdObjects(bcdPath);
    assert.deepEqual(objects.map((o) => o.type).sort(), [BcdObjectType.bootManager, BcdObjectType.osLoader].sort());
  });

  it('lists the changes, and warns that a volume not formatted by Windows lacks the BOOTMGR boot sector code', () => {
    const paths = result.changes.map((c) => c.path);
    assert.ok(paths.includes('partition 2:\\bootmgr') && paths.includes('partition 2:\\Boot\\BCD'), paths.join(', '));
    assert.ok(paths.some((p) => p === 'disk sectors 0-0 (MBR)'));
    assert.ok(result.changes.every((c) => c.description.length > 10 && (c.sha256After === null || c.sha256After.startsWith('sha256:'))));
    assert.match(result.warnings.join('\n'), /NTFS boot sector carries no code that loads BOOTMGR/);
  });

  it('leaves a converted disk alone on a second run', async () => {
    const again = await convertUefiToBios(img.imagePath, { osType: 'windows', workDir: dir });
    assert.deepEqual(again.changes, []);
    assert.match(again.warnings[0]!, /already boots with BIOS/);
  });
});

describe('BCD device records', () => {
  it('encode an MBR partition as type 6 with the byte offset and the MBR disk signature', () => {
    const b = mbrPartitionDevice(0x1234abcd, 105 * MiB);
    assert.equal(b.length, 88);
    assert.ok(
      b.subarray(0, 16).every((x) => x === 0),
      'no additional options',
    );
    assert.deepEqual(
      [
        b.readUInt32LE(0x10),
        b.readUInt32LE(0x18),
        Number(b.readBigUInt64LE(0x20)),
        b.readUInt32LE(0x30),
        b.readUInt32LE(0x34),
        b.readUInt32LE(0x38),
      ],
      [6, 0x48, 105 * MiB, 0, 1, 0x1234abcd],
    );
    assert.deepEqual(parseMbrPartitionDevice(b), { diskSignature: 0x1234abcd, partitionOffsetBytes: 105 * MiB });
    const gptStyle = Buffer.from(b);
    gptStyle.writeUInt32LE(0, 0x34);
    assert.equal(parseMbrPartitionDevice(gptStyle), null);
  });
});

describe('Windows GPT partitions in the MBR', () => {
  it('drops the Microsoft reserved partition and keeps ESP, Windows and recovery with their MBR types', async () => {
    const img = join(dir, 'layout.img');
    const fh = await fsp.open(img, 'w');
    await fh.truncate(128 * MiB);
    await fh.close();
    await writePartitionTable(img, {
      scheme: 'gpt',
      partitions: [
        { startBytes: MiB, sizeBytes: 16 * MiB, type: 'efi' },
        { startBytes: 17 * MiB, sizeBytes: 16 * MiB, type: 'ntfs' },
        { startBytes: 33 * MiB, sizeBytes: 64 * MiB, type: 'ntfs' },
        { startBytes: 97 * MiB, sizeBytes: 16 * MiB, type: 'ntfs' },
      ],
    });
    // Partition 2 becomes the MSR and 4 the recovery partition (sfdisk takes any type GUID).
    await run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', '--part-type', img, '2', 'E3C9E316-0B5C-4DB8-817D-F92DF00215AE']);
    await run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', '--part-type', img, '4', 'DE94BBA4-06D1-4D40-A16A-BFD50179D6AC']);
    const plan = await planGptToMbr(img, { activeGptIndex: 3 });
    assert.deepEqual(
      plan.entries.map((e) => [e.mbrIndex, e.gptIndex, e.typeCode, e.bootable]),
      [
        [1, 1, 0xef, false],
        [2, 3, 0x07, true],
        [3, 4, 0x27, false],
      ],
    );
    assert.deepEqual(
      plan.dropped.map((d) => d.gptIndex),
      [2],
    );
    assert.match(plan.dropped[0]!.reason, /Microsoft reserved/);
  });

  it('refuses a Windows disk without Windows\\Boot\\PCAT\\bootmgr, writing nothing', async () => {
    const img = await buildWindowsDiskImage(join(dir, 'nopcat.img'), {
      sizeBytes: 128 * MiB,
      scheme: 'gpt',
      hostname: 'WIN-NOPCAT',
      usedMiB: 1,
    });
    await assert.rejects(convertUefiToBios(img.imagePath, { osType: 'windows', workDir: dir }), /no \\Windows\\Boot\\PCAT\\bootmgr/);
    assert.equal((await readPartitionTable(img.imagePath)).scheme, 'gpt');
  });
});

describe('Windows restored as Generation 1: preparation, then conversion, in the isolated process', () => {
  it('prepares the guest and converts it to BIOS boot in one unprivileged run, both in the change list', async () => {
    const img = await uefiWindowsDisk('win-isolated.img');
    const r = await prepareGuestDiskIsolated(
      { osType: 'Windows', imagePath: img.imagePath, bootConversion: 'uefi-to-bios' },
      { timeoutMs: 300_000 },
    );
    if (process.getuid?.() === 0) assert.equal(r.sandbox.uid, 65534, 'the child ran unprivileged');
    assert.ok(
      r.changes.some((c) => /ControlSet/.test(c.path)),
      'preparation changed the registry',
    );
    assert.ok(r.bootConversion, 'the conversion ran');
    assert.ok(
      r.bootConversion.changes.some((c) => /MBR/.test(c.path + c.description)),
      JSON.stringify(r.bootConversion.changes.map((c) => c.path)),
    );
    const table = await readPartitionTable(img.imagePath);
    assert.equal(table.scheme, 'mbr');
    const part = await ntfsPart(img, 'isolated-after.img');
    assert.ok((await run('ntfsls', [part])).stdout.split('\n').includes('bootmgr'), 'bootmgr at the root of the active partition');
  });
});
