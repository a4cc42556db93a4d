import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RestoreError } from '../../src/domain/errors';
import { run } from '../../src/guest/exec';
import { PartitionCopy, ntfsCheck, withNtfsMount } from '../../src/guest/windows/ntfs';
import { readPartitionTable } from '../../src/guest/disk/partition';
import {
  HiveReader,
  buildEmptyHive,
  createHive,
  getHiveValue,
  hiveToXml,
  parseLsvalLine,
  setHiveValues,
} from '../../src/guest/windows/regf';
import { buildWindowsDiskImage } from '../../src/lab/images/windows-image';
import {
  NO_AGENT_INSTALLER_WARNING,
  prepareWindowsDisk,
  prepareWindowsDiskDetailed,
  readAgentStaging,
  readHiveValueFromDisk,
  readHiveValuesFromDisk,
  readWindowsFileFromDisk,
  type HiveValueQuery,
} from '../../src/guest/windows/prep';
import { skipWithout } from '../helpers/requirements';
import { seededStream } from '../../src/lab/images/seeded';

const MiB = 1024 * 1024;
const canMount = process.getuid?.() === 0 && existsSync('/dev/fuse');
const noFuse = skipWithout(canMount, 'needs root and /dev/fuse for the ntfs-3g FUSE mount');

let dir: string;
before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'guest-windows-'));
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

function sha256Hex(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

function dwordBytes(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

async function sha256OfRange(file: string, start: number, length: number): Promise<string> {
  const fh = await fsp.open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, start);
    return createHash('sha256').update(buf).digest('hex');
  } finally {
    await fh.close();
  }
}

describe('regf hive generator', () => {
  it('builds an empty hive that hivex opens, with a valid base block checksum', async () => {
    const hive = buildEmptyHive({ rootName: 'ROOT', timestamp: new Date('2024-01-02T03:04:05Z') });
    assert.equal(hive.length, 8192);
    assert.equal(hive.toString('latin1', 0, 4), 'regf');
    assert.equal(hive.toString('latin1', 4096, 4100), 'hbin');
    let sum = 0;
    for (let i = 0; i < 0x1fc; i += 4) sum ^= hive.readUInt32LE(i);
    assert.equal(hive.readUInt32LE(0x1fc), sum >>> 0);
    const path = join(dir, 'empty.hiv');
    await fsp.writeFile(path, hive);
    const xml = await hiveToXml(path);
    assert.match(xml, /<node name="ROOT" root="1">/);
    assert.equal(new HiveReader(hive).rootName(), 'ROOT');
    assert.deepEqual(new HiveReader(hive).subkeys(''), []);
  });

  it('creates keys and values through hivexsh and reads them back through hivexget', async () => {
    const path = join(dir, 'values.hiv');
    await createHive(path, [
      {
        path: 'Control\\Terminal Server',
        values: {
          fDenyTSConnections: { type: 'dword', value: 1 },
          Big: { type: 'dword', value: 0xfffffffe },
          Text: { type: 'string', value: 'plain "quoted" \\ text' },
          Unicode: { type: 'string', value: 'Größe ✓' },
          Path: { type: 'expandString', value: '%SystemRoot%\\system32' },
          List: { type: 'multiString', value: ['NSI', 'Afd'] },
          Blob: { type: 'binary', value: Buffer.from([0, 1, 2, 0xff]) },
          Q: { type: 'qword', value: 0x1122334455667788n },
          '': { type: 'string', value: 'default' },
        },
      },
      { path: 'Empty\\Nested' },
    ]);
    await hiveToXml(path);
    const key = 'Control\\Terminal Server';
    assert.deepEqual(await getHiveValue(path, key, 'fDenyTSConnections'), { type: 'dword', value: 1 });
    assert.deepEqual(await getHiveValue(path, key, 'big'), { type: 'dword', value: 0xfffffffe });
    assert.deepEqual(await getHiveValue(path, key, 'Text'), { type: 'string', value: 'plain "quoted" \\ text' });
    assert.deepEqual(await getHiveValue(path, key, 'Unicode'), { type: 'string', value: 'Größe ✓' });
    assert.deepEqual(await getHiveValue(path, key, 'Path'), { type: 'expandString', value: '%SystemRoot%\\system32' });
    assert.deepEqual(await getHiveValue(path, key, 'List'), { type: 'multiString', value: ['NSI', 'Afd'] });
    assert.deepEqual(await getHiveValue(path, key, 'Blob'), { type: 'binary', value: Buffer.from([0, 1, 2, 0xff]) });
    assert.deepEqual(await getHiveValue(path, key, 'Q'), { type: 'qword', value: 0x1122334455667788n });
    assert.deepEqual(await getHiveValue(path, key, ''), { type: 'string', value: 'default' });
    assert.equal(await getHiveValue(path, key, 'Missing'), null);
    assert.equal(await getHiveValue(path, 'No\\Such\\Key', 'x'), null);
    const reader = await HiveReader.open(path);
    assert.deepEqual(reader.subkeys(''), ['Control', 'Empty']);
    assert.deepEqual(reader.subkeys('empty'), ['Nested']);
  });

  it('edits single values, keeping the other values of the key byte-exact', async () => {
    const path = join(dir, 'edit.hiv');
    await createHive(path, [
      {
        path: 'Services\\Dhcp',
        values: {
          Start: { type: 'dword', value: 3 },
          DependOnService: { type: 'multiString', value: ['NSI', 'Afd'] },
          Description: { type: 'string', value: 'Größe' },
          Odd: { type: 'raw', regType: 1, value: Buffer.from('no terminator', 'utf16le') },
          Gone: { type: 'dword', value: 7 },
        },
      },
    ]);
    const beforeValues = (await HiveReader.open(path)).values('Services\\Dhcp')!;
    const changed = await setHiveValues(path, [
      { keyPath: 'services\\DHCP', name: 'start', value: { type: 'dword', value: 2 } },
      { keyPath: 'Services\\Dhcp', name: 'Gone', value: null },
      { keyPath: 'Services\\New\\Deep', name: 'X', value: { type: 'string', value: 'y' } },
    ]);
    assert.equal(changed, true);
    await hiveToXml(path);
    const reader = await HiveReader.open(path);
    const afterValues = reader.values('Services\\Dhcp')!;
    assert.deepEqual(
      afterValues.map((v) => v.name),
      ['Start', 'DependOnService', 'Description', 'Odd'],
    );
    assert.equal(afterValues[0]!.data.readUInt32LE(0), 2);
    for (const name of ['DependOnService', 'Description', 'Odd']) {
      const a = afterValues.find((v) => v.name === name)!;
      const b = beforeValues.find((v) => v.name === name)!;
      assert.equal(a.regType, b.regType);
      assert.ok(a.data.equals(b.data), `${name} kept byte-exact`);
    }
    assert.deepEqual(await getHiveValue(path, 'Services\\New\\Deep', 'X'), { type: 'string', value: 'y' });
    const unchanged = await fsp.readFile(path);
    assert.equal(await setHiveValues(path, [{ keyPath: 'Services\\Dhcp', name: 'Start', value: { type: 'dword', value: 2 } }]), false);
    assert.ok((await fsp.readFile(path)).equals(unchanged));
  });

  it('parses hivexsh lsval lines', () => {
    assert.deepEqual(parseLsvalLine('"a\\"b"=dword:0000000a'), { name: 'a"b', value: { type: 'dword', value: 10 } });
    assert.deepEqual(parseLsvalLine('"@"="x"'), { name: '', value: { type: 'string', value: 'x' } });
    assert.deepEqual(parseLsvalLine('"e"=str(2):"%a%"'), { name: 'e', value: { type: 'expandString', value: '%a%' } });
    assert.deepEqual(parseLsvalLine('"b"=hex(3):01,02'), { name: 'b', value: { type: 'binary', value: Buffer.from([1, 2]) } });
  });
});

describe('Windows demo image and guest preparation', { skip: noFuse }, () => {
  const CS = ['ControlSet001', 'ControlSet002'];
  const rules = 'Services\\SharedAccess\\Parameters\\FirewallPolicy\\FirewallRules';
  let mbrImage: string;
  let offset: number;
  let agent: string;

  before(async () => {
    mbrImage = join(dir, 'win-mbr.img');
    const t = Date.now();
    const built = await buildWindowsDiskImage(mbrImage, { sizeBytes: 256 * MiB, scheme: 'mbr', hostname: 'web01', usedMiB: 24 });
    console.log(`built 256 MiB MBR image in ${Date.now() - t} ms`);
    offset = built.ntfsPartitionOffset;
    agent = join(dir, 'WindowsAzureVmAgent.msi');
    await fsp.writeFile(agent, seededStream('agent')(300 * 1024));
  });

  it('builds a sparse MBR disk whose NTFS partition holds the VMware-era settings', async () => {
    const table = await readPartitionTable(mbrImage);
    assert.equal(table.scheme, 'mbr');
    assert.equal(table.partitions.length, 1);
    const p = table.partitions[0]!;
    assert.equal(p.type, 'ntfs');
    assert.equal(p.startBytes, MiB);
    assert.equal(p.startBytes, offset);
    assert.equal(p.bootable, true);
    const st = await fsp.stat(mbrImage);
    assert.equal(st.size, 256 * MiB);
    assert.ok(st.blocks * 512 < 80 * MiB, `image stays sparse (${(st.blocks * 512) / MiB} MiB allocated)`);

    const q = (hive: 'SYSTEM' | 'SOFTWARE', keyPath: string, valueName: string): HiveValueQuery => ({ hive, keyPath, valueName });
    const values = await readHiveValuesFromDisk(mbrImage, [
      q('SYSTEM', 'Select', 'Current'),
      q('SYSTEM', 'ControlSet001\\Control\\Terminal Server', 'fDenyTSConnections'),
      q('SYSTEM', 'ControlSet002\\Services\\partmgr\\Parameters', 'SanPolicy'),
      q('SYSTEM', 'ControlSet001\\Services\\VMTools', 'Start'),
      q('SYSTEM', 'ControlSet001\\Control\\ComputerName\\ComputerName', 'ComputerName'),
      q('SYSTEM', `ControlSet001\\${rules}`, 'RemoteDesktop-UserMode-In-TCP'),
      q('SOFTWARE', 'Microsoft\\Windows NT\\CurrentVersion', 'ProductName'),
      q('SOFTWARE', 'Microsoft\\Windows NT\\CurrentVersion', 'CurrentBuild'),
      q('SOFTWARE', 'Microsoft\\Windows\\CurrentVersion\\RunOnce', 'AzureVmAgent'),
    ]);
    assert.deepEqual(values.slice(0, 5), ['1', '1', '2', '2', 'WEB01']);
    assert.match(values[5]!, /^v2\.30\|Action=Allow\|Active=FALSE\|Dir=In\|Protocol=6\|LPort=3389\|/);
    assert.deepEqual(values.slice(6), ['Windows Server 2022 Datacenter', '20348', null]);
    assert.ok(await readWindowsFileFromDisk(mbrImage, 'Windows/System32/drivers/storvsc.sys'));
    assert.ok(await readWindowsFileFromDisk(mbrImage, 'windows/system32/DRIVERS/vmbus.sys'), 'paths resolve case-insensitively');
  });

  it('writes the same user files for the same seed', async () => {
    const other = join(dir, 'win-mbr-again.img');
    await buildWindowsDiskImage(other, { sizeBytes: 256 * MiB, scheme: 'mbr', hostname: 'web01', usedMiB: 24 });
    for (const name of ['document-0001.bin', 'document-0003.bin']) {
      const a = await readWindowsFileFromDisk(mbrImage, `Users/Public/Documents/${name}`);
      const b = await readWindowsFileFromDisk(other, `Users/Public/Documents/${name}`);
      assert.ok(a && b && a.length > 0 && a.equals(b), name);
    }
    await fsp.rm(other);
  });

  it('prepares every ControlSet, stages the agent, keeps NTFS consistent, and is idempotent', async () => {
    let t = Date.now();
    const changes = await prepareWindowsDisk(mbrImage, { agentInstallerPath: agent });
    console.log(`first prepare (256 MiB) in ${Date.now() - t} ms: ${changes.length} changes`);

    const byPath = new Map(changes.map((c) => [c.path, c]));
    for (const cs of CS) {
      const expect = (key: string, name: string, before: string, after: string) => {
        const c = byPath.get(`HKLM\\SYSTEM\\${cs}\\${key}\\${name}`);
        assert.ok(c, `change recorded for ${cs}\\${key}\\${name}`);
        assert.equal(c.action, 'set-value');
        assert.deepEqual(c.diff, [`- ${before}`, `+ ${after}`]);
        assert.equal(c.sha256Before, sha256Hex(dwordBytes(Number(before))));
        assert.equal(c.sha256After, sha256Hex(dwordBytes(Number(after))));
        assert.ok(c.description.length > 0);
      };
      expect('Control\\Terminal Server', 'fDenyTSConnections', '1', '0');
      expect('Services\\partmgr\\Parameters', 'SanPolicy', '2', '1');
      expect('Services\\Dhcp', 'Start', '3', '2');
      expect('Services\\storvsc', 'Start', '3', '0');
      expect('Services\\vmbus', 'Start', '3', '0');
      expect('Services\\VMTools', 'Start', '2', '4');
      for (const rule of ['RemoteDesktop-UserMode-In-TCP', 'RemoteDesktop-UserMode-In-UDP']) {
        const c = byPath.get(`HKLM\\SYSTEM\\${cs}\\${rules}\\${rule}`);
        assert.ok(c, rule);
        assert.equal(c.diff.length, 2);
        assert.match(c.diff[0]!, /^- .*\|Active=FALSE\|/);
        assert.match(c.diff[1]!, /^\+ .*\|Active=TRUE\|/);
        assert.notEqual(c.sha256Before, c.sha256After);
      }
    }
    const runOnce = byPath.get('HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\RunOnce\\AzureVmAgent');
    assert.ok(runOnce);
    assert.equal(runOnce.sha256Before, null);
    assert.match(runOnce.diff[0]!, /^\+ msiexec\.exe \/i "C:\\Windows\\AzureAgent\\WindowsAzureVmAgent\.msi" \/quiet/);
    const staged = byPath.get('C:\\Windows\\AzureAgent\\WindowsAzureVmAgent.msi');
    assert.ok(staged);
    assert.equal(staged.sha256Before, null);
    assert.equal(staged.sha256After, sha256Hex(await fsp.readFile(agent)));
    assert.deepEqual(staged.diff, [], 'file contents are not recorded');
    assert.doesNotMatch(staged.description, /placeholder/i);
    assert.equal(changes.length, 2 * 8 + 2);

    // Every recorded change reads back from the disk image through ntfscat + hivexget.
    const regChanges = changes.filter((c) => c.path.startsWith('HKLM\\'));
    const queries = regChanges.map((c): HiveValueQuery => {
      const [, hive, ...rest] = c.path.split('\\');
      const valueName = rest.pop()!;
      return { hive: hive as 'SYSTEM' | 'SOFTWARE', keyPath: rest.join('\\'), valueName };
    });
    const now = await readHiveValuesFromDisk(mbrImage, queries);
    regChanges.forEach((c, i) => {
      const text = now[i]!;
      const bytes = /^\d+$/.test(text) ? dwordBytes(Number(text)) : Buffer.from(`${text}\0`, 'utf16le');
      assert.equal(sha256Hex(bytes), c.sha256After, c.path);
      assert.ok(text.startsWith(c.diff[c.diff.length - 1]!.slice(2).replace(/…$/, '')), c.path);
    });
    // Rules we do not own stay as they were.
    assert.match(
      (await readHiveValueFromDisk(mbrImage, 'SYSTEM', `ControlSet002\\${rules}`, 'RemoteDesktop-Shadow-In-TCP'))!,
      /\|Active=FALSE\|/,
    );
    assert.equal(
      await readHiveValueFromDisk(mbrImage, 'SYSTEM', 'ControlSet001\\Services\\Dhcp', 'ImagePath'),
      '%SystemRoot%\\system32\\svchost.exe -k LocalServiceNetworkRestricted -p',
    );
    const msi = await readWindowsFileFromDisk(mbrImage, 'Windows/AzureAgent/WindowsAzureVmAgent.msi');
    assert.ok(msi && msi.equals(await fsp.readFile(agent)), 'agent installer staged byte-exact');

    // The filesystem and hives are consistent for ntfs-3g and hivex.
    const work = join(dir, 'check');
    await fsp.mkdir(work, { recursive: true });
    const part = join(work, 'part.img');
    await PartitionCopy.extract(mbrImage, offset, 255 * MiB, part);
    const check = await ntfsCheck(part);
    assert.ok(check.ok, check.output);
    await withNtfsMount(part, work, async (root) => {
      await hiveToXml(join(root, 'Windows/System32/config/SYSTEM'));
      await hiveToXml(join(root, 'Windows/System32/config/SOFTWARE'));
      const docs = await fsp.readdir(join(root, 'Users/Public/Documents'));
      assert.ok(docs.length > 0);
    });
    const info = await run('ntfsinfo', ['-m', part], { allowExit: [1] });
    assert.equal(info.code, 0, info.stderr);
    await fsp.rm(work, { recursive: true });

    t = Date.now();
    assert.deepEqual(await prepareWindowsDisk(mbrImage, { agentInstallerPath: agent }), []);
    console.log(`second prepare in ${Date.now() - t} ms`);
  });

  it('replaces a staged installer that differs, through ntfscp into the existing folder', async () => {
    const newer = join(dir, 'agent-v2.msi');
    await fsp.writeFile(newer, seededStream('agent-v2')(120 * 1024));
    const changes = await prepareWindowsDisk(mbrImage, { agentInstallerPath: newer });
    assert.equal(changes.length, 1);
    assert.equal(changes[0]!.action, 'edit');
    assert.match(changes[0]!.sha256Before!, /^sha256:[0-9a-f]{64}$/);
    assert.equal(changes[0]!.sha256After, sha256Hex(await fsp.readFile(newer)));
    assert.match(changes[0]!.description, /122880 bytes/);
    const msi = await readWindowsFileFromDisk(mbrImage, 'Windows/AzureAgent/WindowsAzureVmAgent.msi');
    assert.ok(msi && msi.equals(await fsp.readFile(newer)));
    assert.deepEqual(await prepareWindowsDisk(mbrImage, { agentInstallerPath: newer }), []);
  });

  it('prepares a GPT disk without an agent installer: nothing staged for the agent, a warning, and nothing outside the NTFS volume changes everything outside the NTFS volume alone', async () => {
    const image = join(dir, 'win-gpt.img');
    const built = await buildWindowsDiskImage(image, { sizeBytes: 160 * MiB, scheme: 'gpt', hostname: 'app02', usedMiB: 8 });
    const table = await readPartitionTable(image);
    assert.equal(table.scheme, 'gpt');
    assert.deepEqual(
      table.partitions.map((p) => p.type),
      ['efi', 'ntfs'],
    );
    const ntfs = table.partitions[1]!;
    assert.equal(ntfs.startBytes, built.ntfsPartitionOffset);
    const head = await sha256OfRange(image, 0, ntfs.startBytes);
    const tail = await sha256OfRange(image, ntfs.startBytes + ntfs.sizeBytes, 160 * MiB - ntfs.startBytes - ntfs.sizeBytes);

    const { changes, warnings } = await prepareWindowsDiskDetailed(image);
    assert.equal(changes.length, 16);
    assert.ok(!changes.some((c) => /AzureAgent|RunOnce/.test(c.path)), changes.map((c) => c.path).join('\n'));
    assert.deepEqual(warnings, [NO_AGENT_INSTALLER_WARNING]);
    assert.equal(await readWindowsFileFromDisk(image, 'Windows/AzureAgent/WindowsAzureVmAgent.msi'), null);
    assert.deepEqual(await readAgentStaging(image), { installerSha256: null, installerBytes: null, runOnce: null, staged: false });
    assert.equal(await sha256OfRange(image, 0, ntfs.startBytes), head);
    assert.equal(await sha256OfRange(image, ntfs.startBytes + ntfs.sizeBytes, 160 * MiB - ntfs.startBytes - ntfs.sizeBytes), tail);
    assert.equal(await readHiveValueFromDisk(image, 'SYSTEM', 'ControlSet002\\Services\\vmbus', 'Start'), '0');
    assert.deepEqual(await prepareWindowsDisk(image), []);
  });

  it('fails with GuestPreparation when no NTFS volume holds Windows', async () => {
    const image = join(dir, 'data-only.img');
    const fh = await fsp.open(image, 'w');
    await fh.truncate(64 * MiB);
    await fh.close();
    await run('mkntfs', ['-F', '-Q', '-q', '-p', '0', '-H', '255', '-S', '63', image]);
    await assert.rejects(prepareWindowsDisk(image), (e: unknown) => {
      assert.ok(e instanceof RestoreError);
      assert.equal(e.type, 'GuestPreparation');
      assert.match(e.message, /no NTFS partition holds/);
      return true;
    });
  });
});
