import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RestoreError } from '../../src/domain/errors';
import { CommandError, run } from '../../src/guest/exec';
import { Ext4Volume } from '../../src/guest/linux/ext4';
import { buildLinuxDiskImage, type LinuxImage } from '../../src/lab/images/linux-image';
import { findLinuxRoot, inspectLinuxDisk, prepareLinuxDisk, prepareLinuxDiskDetailed, readGuestFile } from '../../src/guest/linux/prep';
import {
  NoPartitionTableError,
  copyRange,
  probeFilesystem,
  readPartitionTable,
  writePartitionTable,
  writeRangeInto,
} from '../../src/guest/disk/partition';
import type { GuestChange } from '../../src/guest/types';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

let dir: string;
before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'guest-linux-'));
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function emptyImage(name: string, size: number): Promise<string> {
  const p = join(dir, name);
  const fh = await fsp.open(p, 'w');
  await fh.truncate(size);
  await fh.close();
  return p;
}

/** Independent of the code under test: raw debugfs output for a path. */
async function debugfsStat(image: string, offset: number, p: string): Promise<{ type: string; mode: string; link?: string } | null> {
  const r = await run('debugfs', ['-R', `stat "${p}"`, `${image}?offset=${offset}`], { env: { DEBUGFS_PAGER: '__none__' } });
  const m = /Type:\s+(\S+)\s+Mode:\s+(\d+)/.exec(r.stdout);
  if (!m) return null;
  const link = /Fast link dest: "(.*)"/.exec(r.stdout)?.[1];
  return { type: m[1], mode: m[2], link };
}

async function debugfsCat(image: string, offset: number, p: string): Promise<string> {
  return (await run('debugfs', ['-R', `cat "${p}"`, `${image}?offset=${offset}`])).stdout;
}

async function e2fsckClean(image: string, offset: number): Promise<void> {
  const r = await run('e2fsck', ['-fn', `${image}?offset=${offset}`], { allowExit: [1, 4, 8] });
  assert.equal(r.code, 0, `e2fsck -fn reported problems:\n${r.stdout}${r.stderr}`);
}

function sha256(s: string | Buffer): string {
  return `sha256:${createHash('sha256').update(s).digest('hex')}`;
}

function changeFor(changes: GuestChange[], p: string): GuestChange {
  const c = changes.find((x) => x.path === p);
  assert.ok(c, `expected a change for ${p}; got ${changes.map((x) => x.path).join(', ')}`);
  return c;
}

describe('exec.run', () => {
  it('returns stdout/stderr/code, feeds stdin and names the command on failure', async () => {
    const r = await run('sh', ['-c', 'cat; echo err >&2'], { input: 'hello' });
    assert.equal(r.stdout, 'hello');
    assert.equal(r.stderr, 'err\n');
    assert.equal(r.code, 0);
    assert.equal((await run('sh', ['-c', 'exit 3'], { allowExit: [3] })).code, 3);
    await assert.rejects(run('sh', ['-c', 'echo boom >&2; exit 2']), (e: unknown) => {
      assert.ok(e instanceof CommandError && e instanceof RestoreError);
      assert.equal(e.type, 'GuestPreparation');
      assert.match(e.message, /sh -c 'echo boom >&2; exit 2' exited with code 2: boom/);
      return true;
    });
    await assert.rejects(run('definitely-not-a-command-xyz', []), /command not found/);
  });
});

describe('partition tables', () => {
  it('reads an sfdisk-written MBR with an extended partition like sfdisk does', async () => {
    const img = await emptyImage('mbr-ext.img', 64 * MiB);
    const script = [
      'label: dos',
      'label-id: 0xdeadbeef',
      'start=2048, size=20480, type=83, bootable',
      'start=22528, size=40960, type=5',
      'start=24576, size=8192, type=7',
      'start=34816, size=16384, type=ef',
      'start=63488, size=40960, type=8e',
    ].join('\n');
    await run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', img], { input: script + '\n' });
    const t = await readPartitionTable(img);
    const json = JSON.parse((await run('sfdisk', ['--json', img])).stdout) as {
      partitiontable: { id: string; partitions: { node: string; start: number; size: number; type: string; bootable?: boolean }[] };
    };
    assert.equal(t.scheme, 'mbr');
    assert.equal(t.diskId, json.partitiontable.id);
    const ours = t.partitions.map((p) => ({ index: p.index, start: p.startBytes / 512, size: p.sizeBytes / 512, type: p.typeCode }));
    const theirs = json.partitiontable.partitions
      .filter((p) => p.type !== '5')
      .map((p) => ({ index: Number(/(\d+)$/.exec(p.node)![1]), start: p.start, size: p.size, type: p.type.padStart(2, '0') }));
    const byIndex = (a: { index: number }, b: { index: number }) => a.index - b.index;
    assert.deepEqual(ours.sort(byIndex), theirs.sort(byIndex));
    assert.deepEqual(
      t.partitions.map((p) => [p.index, p.type, p.bootable]).sort((a, b) => Number(a[0]) - Number(b[0])),
      [
        [1, 'linux', true],
        [3, 'other', false],
        [5, 'ntfs', false],
        [6, 'efi', false],
      ],
    );
  });

  it('writes and reads GPT (protective MBR → header at LBA 1), also from a buffer', async () => {
    const img = await emptyImage('gpt.img', 128 * MiB);
    await writePartitionTable(img, {
      scheme: 'gpt',
      diskId: '0A1B2C3D-4E5F-4061-8293-A4B5C6D7E8F9',
      partitions: [
        { startBytes: MiB, sizeBytes: 100 * MiB, type: 'efi', name: 'EFI system', uuid: '11111111-2222-4333-8444-555555555555' },
        { startBytes: 101 * MiB, sizeBytes: 16 * MiB, type: 'ntfs' },
        { startBytes: 117 * MiB, sizeBytes: 10 * MiB, type: 'linux', bootable: true },
      ],
    });
    const t = await readPartitionTable(img);
    assert.equal(t.scheme, 'gpt');
    assert.equal(t.diskId, '0A1B2C3D-4E5F-4061-8293-A4B5C6D7E8F9');
    assert.deepEqual(
      t.partitions.map((p) => [p.index, p.startBytes, p.sizeBytes, p.type, p.bootable]),
      [
        [1, MiB, 100 * MiB, 'efi', false],
        [2, 101 * MiB, 16 * MiB, 'ntfs', false],
        [3, 117 * MiB, 10 * MiB, 'linux', true],
      ],
    );
    assert.equal(t.partitions[0].uuid, '11111111-2222-4333-8444-555555555555');
    assert.equal(t.partitions[0].name, 'EFI system');
    assert.equal(t.partitions[2].typeCode, '0FC63DAF-8483-4772-8E79-3D69D8477DE4');
    const json = JSON.parse((await run('sfdisk', ['--json', img])).stdout) as {
      partitiontable: { label: string; partitions: { start: number; size: number; type: string; uuid: string }[] };
    };
    assert.equal(json.partitiontable.label, 'gpt');
    assert.deepEqual(
      t.partitions.map((p) => [p.startBytes / 512, p.sizeBytes / 512, p.typeCode, p.uuid]),
      json.partitiontable.partitions.map((p) => [p.start, p.size, p.type, p.uuid]),
    );

    const head = Buffer.alloc(MiB);
    const fh = await fsp.open(img, 'r');
    await fh.read(head, 0, MiB, 0);
    await fh.close();
    assert.deepEqual(await readPartitionTable(head), t);
  });

  it('rejects images without a partition table', async () => {
    const blank = await emptyImage('blank.img', 4 * MiB);
    await assert.rejects(readPartitionTable(blank), NoPartitionTableError);
    const bare = await emptyImage('bare-ext4.img', 16 * MiB);
    await run('mke2fs', ['-q', '-t', 'ext4', '-F', bare]);
    await assert.rejects(readPartitionTable(bare), NoPartitionTableError);
    const fs = await probeFilesystem(bare, 0);
    assert.equal(fs?.type, 'ext4');
    const blkid = (await run('blkid', ['-p', '-s', 'UUID', '-o', 'value', bare])).stdout.trim();
    assert.equal(fs?.uuid, blkid);
  });

  it('copies ranges sparsely and zeroes stale destination data', async () => {
    const src = join(dir, 'part-src.img');
    const fh = await fsp.open(src, 'w');
    await fh.truncate(32 * MiB);
    const a = Buffer.alloc(8192, 0xab);
    await fh.write(a, 0, a.length, 0);
    await fh.write(a, 0, 4096, 20 * MiB + 4096);
    await fh.close();
    const disk = await emptyImage('embed.img', 64 * MiB);
    const r = await writeRangeInto(disk, MiB, src, { dstIsZero: true });
    assert.equal(r.bytesWritten, 8192 + 4096);
    const st = await fsp.stat(disk);
    assert.equal(st.size, 64 * MiB);
    assert.ok(st.blocks * 512 <= 64 * 1024, `embedded image should stay sparse, uses ${st.blocks * 512} bytes`);
    const back = join(dir, 'extracted.img');
    await copyRange(disk, back, MiB, 32 * MiB);
    const sha = async (p: string) =>
      createHash('sha256')
        .update(await fsp.readFile(p))
        .digest('hex');
    assert.equal(await sha(back), await sha(src));

    // Writing an all-zero partition image over data must clear it, not skip it.
    const zeros = await emptyImage('zeros.img', 32 * MiB);
    const z = await writeRangeInto(disk, MiB, zeros);
    assert.equal(z.bytesWritten, 8192 + 4096);
    const all = await fsp.readFile(disk);
    assert.ok(all.every((b) => b === 0));
  });
});

describe('Linux demo images and guest preparation', () => {
  let ubuntu: LinuxImage;
  let rocky: LinuxImage;
  let debian: LinuxImage;

  before(async () => {
    [ubuntu, rocky, debian] = await Promise.all([
      buildLinuxDiskImage(join(dir, 'ubuntu.img'), {
        sizeBytes: 512 * MiB,
        scheme: 'mbr',
        hostname: 'web-01',
        networkStyle: 'netplan',
        firewall: 'ufw',
        usedMiB: 24,
      }),
      buildLinuxDiskImage(join(dir, 'rocky.img'), {
        sizeBytes: 512 * MiB,
        scheme: 'gpt',
        hostname: 'db-01',
        networkStyle: 'ifcfg',
        firewall: 'firewalld',
        nicName: 'eth0',
        usedMiB: 24,
      }),
      buildLinuxDiskImage(join(dir, 'debian.img'), {
        sizeBytes: 256 * MiB,
        scheme: 'mbr',
        hostname: 'app-01',
        networkStyle: 'interfaces',
        firewall: 'iptables',
        nicName: 'ens192',
        usedMiB: 8,
      }),
    ]);
  });

  it('builds an 8 GiB sparse image quickly with a valid table and a clean ext4', async () => {
    const img = join(dir, 'big.img');
    const t0 = Date.now();
    const r = await buildLinuxDiskImage(img, {
      sizeBytes: 8 * GiB,
      scheme: 'mbr',
      hostname: 'big-01',
      networkStyle: 'netplan',
      firewall: 'ufw',
    });
    const ms = Date.now() - t0;
    assert.ok(ms < 10_000, `8 GiB build took ${ms} ms`);
    const st = await fsp.stat(img);
    assert.equal(st.size, 8 * GiB);
    const allocated = st.blocks * 512;
    assert.ok(allocated > 100 * MiB && allocated < 300 * MiB, `allocated ${allocated} bytes`);
    const t = await readPartitionTable(img);
    assert.deepEqual(
      t.partitions.map((p) => [p.index, p.startBytes, p.sizeBytes, p.type]),
      [[1, MiB, 8 * GiB - 2 * MiB, 'linux']],
    );
    assert.equal(r.rootPartitionOffset, MiB);
    assert.equal((await probeFilesystem(img, MiB))?.uuid, r.rootFsUuid);
    await e2fsckClean(img, MiB);
    const t1 = Date.now();
    const changes = await prepareLinuxDisk(img);
    const prepMs = Date.now() - t1;
    assert.ok(changes.length >= 10);
    assert.ok(prepMs < 10_000, `prepare took ${prepMs} ms`);
    await e2fsckClean(img, MiB);
  });

  it('is reproducible: the same options give the same ids and file contents', async () => {
    const opts = {
      sizeBytes: 128 * MiB,
      scheme: 'gpt' as const,
      hostname: 'rep-01',
      networkStyle: 'netplan' as const,
      firewall: 'ufw' as const,
      usedMiB: 4,
    };
    const a = await buildLinuxDiskImage(join(dir, 'rep-a.img'), opts);
    const b = await buildLinuxDiskImage(join(dir, 'rep-b.img'), opts);
    assert.equal(a.rootFsUuid, b.rootFsUuid);
    assert.deepEqual(await readPartitionTable(a.imagePath), await readPartitionTable(b.imagePath));
    const list = async (img: string) =>
      (await run('debugfs', ['-R', 'ls -p /usr/share/demo/pkg00', `${img}?offset=${MiB}`])).stdout.replace(/^\/\d+\//gm, '/');
    assert.equal(await list(a.imagePath), await list(b.imagePath));
    const va = new Ext4Volume(a.imagePath, MiB);
    const vb = new Ext4Volume(b.imagePath, MiB);
    const blob = '/usr/share/demo/pkg00/blob-00000.bin';
    assert.deepEqual(await va.readFile(blob), await vb.readFile(blob));
    assert.equal(await va.readText('/etc/fstab'), await vb.readText('/etc/fstab'));
  });

  it('generates plausible guests that need preparation', async () => {
    const off = ubuntu.rootPartitionOffset;
    assert.equal(await readGuestFile(ubuntu.imagePath, off, '/etc/hostname'), 'web-01\n');
    assert.match((await readGuestFile(ubuntu.imagePath, off, '/etc/os-release'))!, /^ID=ubuntu$/m);
    assert.equal((await debugfsStat(ubuntu.imagePath, off, '/etc/os-release'))?.type, 'symlink');
    const fstab = (await readGuestFile(ubuntu.imagePath, off, '/etc/fstab'))!;
    assert.match(fstab, /^\/dev\/sda1\s+\/\s/m);
    assert.match(fstab, /^\/dev\/sdb1\s+\/srv\/data\s/m);
    assert.match(fstab, /^UUID=/m);
    assert.equal(await debugfsStat(ubuntu.imagePath, off, '/etc/systemd/system/multi-user.target.wants/ssh.service'), null);
    assert.equal(await debugfsStat(ubuntu.imagePath, off, '/etc/systemd/system/multi-user.target.wants/walinuxagent.service'), null);
    assert.equal((await debugfsStat(ubuntu.imagePath, off, '/usr/sbin/waagent'))?.mode, '0755');
    assert.ok(await debugfsStat(ubuntu.imagePath, off, '/lib/systemd/system/walinuxagent.service'));
    assert.match((await readGuestFile(ubuntu.imagePath, off, '/etc/default/grub'))!, /^GRUB_CMDLINE_LINUX_DEFAULT="quiet splash"$/m);
    assert.doesNotMatch((await readGuestFile(ubuntu.imagePath, off, '/etc/ufw/user.rules'))!, /--dport 22\b/);
    assert.match((await readGuestFile(ubuntu.imagePath, off, '/etc/ufw/ufw.conf'))!, /^ENABLED=yes$/m);
    assert.match(
      (await readGuestFile(ubuntu.imagePath, off, '/etc/netplan/00-installer-config.yaml'))!,
      /ens192:\n\s+addresses:\n\s+- 192\.168\.\d+\.\d+\/24/,
    );
    assert.ok(await readGuestFile(ubuntu.imagePath, off, '/etc/udev/rules.d/70-persistent-net.rules'));

    const r = rocky.rootPartitionOffset;
    assert.match((await readGuestFile(rocky.imagePath, r, '/etc/os-release'))!, /ID_LIKE="rhel/);
    assert.doesNotMatch((await readGuestFile(rocky.imagePath, r, '/etc/firewalld/zones/public.xml'))!, /"ssh"/);
    assert.match((await readGuestFile(rocky.imagePath, r, '/etc/sysconfig/network-scripts/ifcfg-eth0'))!, /^IPADDR=/m);
    assert.match((await readGuestFile(rocky.imagePath, r, '/etc/default/grub'))!, /^GRUB_CMDLINE_LINUX="rhgb quiet"$/m);
    assert.ok(await debugfsStat(rocky.imagePath, r, '/usr/lib/systemd/system/waagent.service'));

    const d = debian.rootPartitionOffset;
    const rules = (await readGuestFile(debian.imagePath, d, '/etc/iptables/rules.v4'))!;
    assert.match(rules, /^:INPUT DROP/m);
    assert.doesNotMatch(rules, /--dport 22\b/);
    assert.match((await readGuestFile(debian.imagePath, d, '/etc/network/interfaces'))!, /^iface ens192 inet static$/m);
    assert.equal((await readPartitionTable(rocky.imagePath)).scheme, 'gpt');
    await e2fsckClean(rocky.imagePath, r);
  });

  it('finds the root filesystem through the partition table and /etc/fstab', async () => {
    const root = await findLinuxRoot(rocky.imagePath);
    assert.equal(root.partitionIndex, 1);
    assert.equal(root.partitionOffset, MiB);
    assert.equal(root.filesystem.uuid, rocky.rootFsUuid);
    assert.equal(root.table?.scheme, 'gpt');
    await assert.rejects(findLinuxRoot(rocky.imagePath, { rootPartitionIndex: 2 }), /has no partition 2/);
    const blank = await emptyImage('no-root.img', 16 * MiB);
    await writePartitionTable(blank, { scheme: 'mbr', partitions: [{ startBytes: MiB, sizeBytes: 8 * MiB, type: 'linux' }] });
    await assert.rejects(
      findLinuxRoot(blank),
      (e: unknown) => e instanceof RestoreError && /no ext2\/3\/4 root filesystem/.test(e.message),
    );
  });

  it('prepares an Ubuntu (MBR, netplan, ufw) guest and reads every change back', async () => {
    const img = ubuntu.imagePath;
    const off = ubuntu.rootPartitionOffset;
    const result = await prepareLinuxDiskDetailed(img);
    assert.equal(result.family, 'ubuntu');
    assert.equal(result.networkStyle, 'netplan');
    assert.deepEqual(result.firewalls, ['ufw']);
    assert.deepEqual(result.warnings, []);
    const changes = result.changes;
    for (const c of changes) {
      assert.ok(c.description.length > 10, c.path);
      assert.notEqual(c.sha256Before, c.sha256After, c.path);
    }

    const wants = '/etc/systemd/system/multi-user.target.wants';
    assert.deepEqual(await debugfsStat(img, off, `${wants}/ssh.service`), {
      type: 'symlink',
      mode: '0777',
      link: '/lib/systemd/system/ssh.service',
    });
    assert.equal((await debugfsStat(img, off, '/etc/systemd/system/sshd.service'))?.link, '/lib/systemd/system/ssh.service');
    assert.equal((await debugfsStat(img, off, `${wants}/walinuxagent.service`))?.link, '/lib/systemd/system/walinuxagent.service');
    assert.deepEqual(changeFor(changes, `${wants}/ssh.service`).diff, ['+ -> /lib/systemd/system/ssh.service']);
    assert.equal(changeFor(changes, `${wants}/ssh.service`).sha256After, sha256('-> /lib/systemd/system/ssh.service'));

    const ufw = await debugfsCat(img, off, '/etc/ufw/user.rules');
    assert.match(ufw, /^-A ufw-user-input -p tcp --dport 22 -j ACCEPT$/m);
    assert.ok(ufw.indexOf('--dport 22') < ufw.indexOf('### END RULES ###'));
    assert.match(await debugfsCat(img, off, '/etc/ufw/user6.rules'), /^-A ufw6-user-input -p tcp --dport 22 -j ACCEPT$/m);
    assert.equal((await debugfsStat(img, off, '/etc/ufw/user.rules'))?.mode, '0640', 'mode kept on rewrite');
    const ufwChange = changeFor(changes, '/etc/ufw/user.rules');
    assert.equal(ufwChange.sha256After, sha256(ufw));
    assert.deepEqual(ufwChange.diff, [
      '+ ### tuple ### allow tcp 22 0.0.0.0/0 any 0.0.0.0/0 in',
      '+ -A ufw-user-input -p tcp --dport 22 -j ACCEPT',
      '+ ',
    ]);

    assert.equal(await debugfsStat(img, off, '/etc/udev/rules.d/70-persistent-net.rules'), null);
    const udev = changeFor(changes, '/etc/udev/rules.d/70-persistent-net.rules');
    assert.equal(udev.action, 'remove');
    assert.equal(udev.sha256After, null);
    assert.match(udev.sha256Before!, /^sha256:[0-9a-f]{64}$/);
    assert.equal((await debugfsStat(img, off, '/etc/udev/rules.d/75-persistent-net-generator.rules'))?.link, '/dev/null');

    const netplan = await debugfsCat(img, off, '/etc/netplan/90-vmrestore-azure-dhcp.yaml');
    assert.match(netplan, /^ {4}eth0:$/m);
    assert.match(netplan, /^ {6}dhcp4: true$/m);
    assert.equal((await debugfsStat(img, off, '/etc/netplan/90-vmrestore-azure-dhcp.yaml'))?.mode, '0600');
    assert.equal(await debugfsStat(img, off, '/etc/netplan/00-installer-config.yaml'), null, 'static config parked');
    assert.match(await debugfsCat(img, off, '/etc/netplan/00-installer-config.yaml.vmrestore-disabled'), /addresses:/);

    const fstab = await debugfsCat(img, off, '/etc/fstab');
    assert.match(fstab, new RegExp(`^UUID=${ubuntu.rootFsUuid}\\s+/\\s+ext4\\s+errors=remount-ro\\s`, 'm'));
    assert.match(fstab, /^\/dev\/sdb1\s+\/srv\/data\s+ext4\s+defaults,nofail\s/m);
    assert.match(fstab, /^UUID=\S+ \/srv\/backup xfs defaults 0 2$/m, 'UUID entries are left alone');
    assert.doesNotMatch(fstab, /\/dev\/sda/);
    const blkid = (await run('blkid', ['-p', '-O', String(off), '-s', 'UUID', '-o', 'value', img])).stdout.trim();
    assert.equal(blkid, ubuntu.rootFsUuid);

    const grub = await debugfsCat(img, off, '/etc/default/grub');
    assert.match(grub, /^GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 earlyprintk=ttyS0 net.ifnames=0"$/m);
    assert.match(grub, /^GRUB_CMDLINE_LINUX_DEFAULT=""$/m, 'quiet splash removed: the boot shows on the serial console');
    const cfg = await debugfsCat(img, off, '/boot/grub/grub.cfg');
    for (const l of cfg.split('\n').filter((x) => /^\s*linux\s/.test(x)))
      assert.match(l, / console=ttyS0,115200n8 earlyprintk=ttyS0 net.ifnames=0$/);

    await e2fsckClean(img, off);
    assert.deepEqual(await prepareLinuxDisk(img), [], 'second run changes nothing');
    await e2fsckClean(img, off);
  });

  it('prepares a Rocky (GPT, ifcfg, firewalld) guest', async () => {
    const img = rocky.imagePath;
    const off = rocky.rootPartitionOffset;
    const changes = await prepareLinuxDisk(img);
    assert.equal(
      (await debugfsStat(img, off, '/etc/systemd/system/multi-user.target.wants/sshd.service'))?.link,
      '/usr/lib/systemd/system/sshd.service',
    );
    assert.equal(
      (await debugfsStat(img, off, '/etc/systemd/system/multi-user.target.wants/waagent.service'))?.link,
      '/usr/lib/systemd/system/waagent.service',
    );

    const zone = await debugfsCat(img, off, '/etc/firewalld/zones/public.xml');
    assert.match(zone, /<service name="ssh"\/>\n<\/zone>/);
    assert.match(zone, /<service name="https"\/>/);

    const ifcfg = await debugfsCat(img, off, '/etc/sysconfig/network-scripts/ifcfg-eth0');
    assert.match(ifcfg, /^BOOTPROTO=dhcp$/m);
    assert.match(ifcfg, /^ONBOOT=yes$/m);
    assert.match(ifcfg, /^DEVICE=eth0$/m);
    assert.doesNotMatch(ifcfg, /^(IPADDR|PREFIX|GATEWAY|HWADDR)=/m);
    assert.ok(changeFor(changes, '/etc/sysconfig/network-scripts/ifcfg-eth0').diff.some((l) => /^- IPADDR=/.test(l)));
    assert.doesNotMatch(await debugfsCat(img, off, '/etc/sysconfig/network'), /GATEWAY/);

    const fstab = await debugfsCat(img, off, '/etc/fstab');
    assert.match(fstab, new RegExp(`^UUID=${rocky.rootFsUuid}\\s+/\\s`, 'm'));
    assert.match(fstab, /\/srv\/data\s+ext4\s+defaults,nofail/);

    assert.match(
      await debugfsCat(img, off, '/etc/default/grub'),
      /^GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 earlyprintk=ttyS0 net.ifnames=0"$/m,
    );
    const env = await debugfsCat(img, off, '/boot/grub2/grubenv');
    assert.equal(Buffer.byteLength(env), 1024, 'grubenv keeps its 1 KiB block size');
    assert.match(
      env,
      new RegExp(`^kernelopts=root=UUID=${rocky.rootFsUuid} ro console=ttyS0,115200n8 earlyprintk=ttyS0 net.ifnames=0 $`, 'm'),
    );
    assert.equal(await debugfsStat(img, off, '/etc/udev/rules.d/70-persistent-net.rules'), null);

    await e2fsckClean(img, off);
    assert.deepEqual(await prepareLinuxDisk(img), []);
  });

  it('prepares a Debian (interfaces, iptables) guest, unmasking sshd and enabling cloud-init', async () => {
    const img = debian.imagePath;
    const off = debian.rootPartitionOffset;
    const vol = new Ext4Volume(img, off);
    // An administrator masked sshd, and cloud-init is installed but disabled.
    await vol.apply([
      { op: 'symlink', path: '/etc/systemd/system/ssh.service', target: '/dev/null' },
      {
        op: 'write',
        path: '/lib/systemd/system/cloud-init.service',
        content: '[Unit]\nDescription=Cloud-init\n[Install]\nWantedBy=cloud-init.target\n',
      },
      {
        op: 'write',
        path: '/lib/systemd/system/cloud-init.target',
        content: '[Unit]\nDescription=Cloud-init target\n[Install]\nWantedBy=multi-user.target\n',
      },
      { op: 'write', path: '/etc/cloud/cloud-init.disabled', content: '' },
    ]);
    await e2fsckClean(img, off);

    const changes = await prepareLinuxDisk(img);
    const unmask = changeFor(changes, '/etc/systemd/system/ssh.service');
    assert.equal(unmask.action, 'remove');
    assert.equal(unmask.sha256Before, sha256('-> /dev/null'));
    assert.equal(await debugfsStat(img, off, '/etc/systemd/system/ssh.service'), null, 'mask removed');
    assert.equal(
      (await debugfsStat(img, off, '/etc/systemd/system/multi-user.target.wants/ssh.service'))?.link,
      '/lib/systemd/system/ssh.service',
    );
    assert.equal((await debugfsStat(img, off, '/etc/systemd/system/sshd.service'))?.link, '/lib/systemd/system/ssh.service');
    assert.equal(
      (await debugfsStat(img, off, '/etc/systemd/system/cloud-init.target.wants/cloud-init.service'))?.link,
      '/lib/systemd/system/cloud-init.service',
    );
    assert.equal(
      (await debugfsStat(img, off, '/etc/systemd/system/multi-user.target.wants/cloud-init.target'))?.link,
      '/lib/systemd/system/cloud-init.target',
    );
    assert.equal(await debugfsStat(img, off, '/etc/cloud/cloud-init.disabled'), null);

    const rules = await debugfsCat(img, off, '/etc/iptables/rules.v4');
    const lines = rules.split('\n');
    const accept = lines.indexOf('-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT');
    assert.ok(accept > 0, rules);
    assert.ok(accept < lines.findIndex((l) => l.startsWith('-A INPUT') && l.includes('-j LOG')), 'before the log+drop pair');
    assert.ok(accept < lines.indexOf('-A INPUT -j DROP'));
    assert.match(await debugfsCat(img, off, '/etc/iptables/rules.v6'), /^-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT$/m);

    const ifaces = await debugfsCat(img, off, '/etc/network/interfaces');
    assert.match(ifaces, /^auto eth0\niface eth0 inet dhcp\n$/m);
    assert.match(ifaces, /^# vmrestore-disabled: iface ens192 inet static$/m, 'the VMware-era stanza is commented out');
    assert.doesNotMatch(ifaces, /^\s*(auto|allow-hotplug|iface)\s+ens192\b/m, 'and no longer brought up');

    await e2fsckClean(img, off);
    assert.deepEqual(await prepareLinuxDisk(img), []);
  });

  it('rewrites an eth0 static stanza in /etc/network/interfaces', async () => {
    const img = (
      await buildLinuxDiskImage(join(dir, 'deb-eth0.img'), {
        sizeBytes: 128 * MiB,
        scheme: 'gpt',
        hostname: 'app-02',
        networkStyle: 'interfaces',
        firewall: 'iptables',
        usedMiB: 1,
      })
    ).imagePath;
    const changes = await prepareLinuxDisk(img);
    const c = changeFor(changes, '/etc/network/interfaces');
    assert.ok(c.diff.includes('- iface eth0 inet static'), c.diff.join('\n'));
    assert.ok(
      c.diff.some((l) => /^- \taddress /.test(l)),
      c.diff.join('\n'),
    );
    const after = (await readGuestFile(img, MiB, '/etc/network/interfaces'))!;
    assert.match(after, /^allow-hotplug eth0\niface eth0 inet dhcp\n$/m);
    assert.doesNotMatch(after, /address|gateway|dns-/);
  });

  it('flags UUID entries of filesystems that are not restored when told which ones are', async () => {
    const r = await inspectLinuxDisk(ubuntu.imagePath, { knownFilesystemUuids: [ubuntu.rootFsUuid] });
    const fstab = changeFor(r.changes, '/etc/fstab');
    assert.ok(
      fstab.diff.some((l) => /^\+ UUID=\S+ \/srv\/backup xfs defaults,nofail 0 2$/.test(l)),
      fstab.diff.join('\n'),
    );
    assert.doesNotMatch(
      (await readGuestFile(ubuntu.imagePath, MiB, '/etc/fstab'))!,
      /backup xfs defaults,nofail/,
      'inspect does not write',
    );
  });

  it('handles a filesystem without a partition table', async () => {
    const tree = join(dir, 'bare-tree');
    await fsp.mkdir(join(tree, 'etc/default'), { recursive: true });
    await fsp.writeFile(join(tree, 'etc/fstab'), '/dev/vda  /  ext4  defaults  0 1\n/dev/vdb1 /data ext4 defaults 0 2\n');
    await fsp.writeFile(join(tree, 'etc/default/grub'), 'GRUB_TIMEOUT=1\n');
    await fsp.writeFile(join(tree, 'etc/os-release'), 'ID=debian\n');
    const img = await emptyImage('bare-root.img', 32 * MiB);
    await run('mke2fs', ['-q', '-t', 'ext4', '-F', '-d', tree, img]);
    const result = await prepareLinuxDiskDetailed(img);
    assert.equal(result.root.partitionIndex, null);
    assert.equal(result.root.partitionOffset, 0);
    assert.ok(result.warnings.some((w) => /OpenSSH server is not installed/.test(w)));
    assert.ok(result.warnings.some((w) => /Azure Linux agent/.test(w)));
    const fstab = (await readGuestFile(img, 0, '/etc/fstab'))!;
    assert.match(fstab, new RegExp(`^UUID=${result.root.filesystem.uuid}  /  ext4`, 'm'));
    assert.match(fstab, /^\/dev\/vdb1 \/data ext4 defaults,nofail 0 2$/m);
    assert.equal(
      await readGuestFile(img, 0, '/etc/default/grub'),
      'GRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX="console=ttyS0,115200n8 earlyprintk=ttyS0 net.ifnames=0"\n',
    );
    await e2fsckClean(img, 0);
    assert.deepEqual(await prepareLinuxDisk(img), []);
  });
});
