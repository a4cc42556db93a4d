/**
 * Hostile guests: images built with Debian's mke2fs from trees that try to break guest preparation
 * (long lines, `!` shell escapes, quotes and newlines in names, symlinks out of /etc and loops, huge
 * files, damaged superblocks, absurd GPT headers). Each is prepared safely or refused with a clear
 * error; no command runs (every payload touches a /tmp/pwned-<random> file that must not exist), no
 * crash, no hang.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { RestoreError } from '../../src/domain/errors';
import { run } from '../../src/guest/exec';
import { prepareGuestDiskIsolated, type IsolatedPrepResult } from '../../src/guest/isolation';
import { Ext4Volume, MAX_GUEST_FILE_BYTES, UnsafeGuestPathError } from '../../src/guest/linux/ext4';
import { buildLinuxDiskImage, type LinuxImageOptions } from '../../src/lab/images/linux-image';
import { prepareLinuxDiskDetailed } from '../../src/guest/linux/prep';
import { readPartitionTable } from '../../src/guest/disk/partition';
import { HiveReader, buildEmptyHive, hiveToXml, setHiveValues } from '../../src/guest/windows/regf';
import { maskSecrets, shortDiff } from '../../src/guest/types';

const MiB = 1024 * 1024;
const token = randomBytes(6).toString('hex');
let dir: string;
let n = 0;
const payloads: string[] = [];

/** A shell command that leaves a trace if any guest byte is ever run as a command. */
function payload(): string {
  const file = `/tmp/pwned-${token}-${payloads.length}`;
  payloads.push(file);
  return `!touch ${file} #`;
}

before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'guest-hostile-'));
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});
afterEach(() => {
  for (const p of payloads) assert.equal(existsSync(p), false, `guest payload ran: ${p} exists`);
});

async function hostileImage(customize: (root: string) => Promise<void>, opts: Partial<LinuxImageOptions> = {}): Promise<string> {
  const d = join(dir, `img-${n++}`);
  await fsp.mkdir(d);
  const img = await buildLinuxDiskImage(join(d, 'disk.img'), {
    sizeBytes: 128 * MiB,
    scheme: 'gpt',
    hostname: `hostile-${n}`,
    networkStyle: 'ifcfg',
    firewall: 'firewalld',
    nicName: 'eth0',
    usedMiB: 1,
    customize,
    ...opts,
  });
  return img.imagePath;
}

async function put(root: string, p: string, content: string | Buffer, mode = 0o644): Promise<void> {
  const full = join(root, p);
  await fsp.mkdir(join(full, '..'), { recursive: true });
  await fsp.rm(full, { force: true, recursive: true });
  await fsp.writeFile(full, content, { mode });
}

async function link(root: string, p: string, target: string): Promise<void> {
  const full = join(root, p);
  await fsp.mkdir(join(full, '..'), { recursive: true });
  await fsp.rm(full, { force: true, recursive: true });
  await fsp.symlink(target, full);
}

async function cat(image: string, p: string): Promise<Buffer> {
  return (await run('debugfs', ['-R', `cat "${p}"`, `${image}?offset=${MiB}`], { maxStdoutBytes: 16 * MiB })).stdoutBuffer;
}

async function lstatType(image: string, p: string): Promise<string | null> {
  const st = await new Ext4Volume(image, MiB).stat(p);
  return st ? st.type : null;
}

async function e2fsckClean(image: string): Promise<void> {
  const r = await run('e2fsck', ['-fn', `${image}?offset=${MiB}`], { allowExit: [1, 4, 8] });
  assert.equal(r.code, 0, `e2fsck -fn reported problems:\n${r.stdout}${r.stderr}`);
}

/** Preparation as the activity runs it: isolated child process. Bounded in time, never a hang. */
async function prepare(image: string): Promise<IsolatedPrepResult> {
  return prepareGuestDiskIsolated({ osType: 'Linux', imagePath: image }, { timeoutMs: 120_000 });
}

function hasWarning(r: { warnings: string[] }, re: RegExp): void {
  assert.ok(
    r.warnings.some((w) => re.test(w)),
    `expected a warning matching ${re}; got:\n${r.warnings.join('\n')}`,
  );
}

describe('hostile Linux guests', { timeout: 600_000 }, () => {
  it('never runs guest strings as debugfs commands: 8 KB DefaultZone, unit names, Alias with quotes', async () => {
    const longZone = 'a'.repeat(8164) + payload();
    const longUnit = 'b'.repeat(8150) + payload() + '.target';
    const image = await hostileImage(async (root) => {
      await put(root, 'etc/firewalld/firewalld.conf', `# firewalld config file\nDefaultZone=${longZone}\nCleanupOnExit=yes\n`);
      const unit = await fsp.readFile(join(root, 'usr/lib/systemd/system/sshd.service'), 'utf8');
      await put(
        root,
        'usr/lib/systemd/system/sshd.service',
        unit.replace(
          'WantedBy=multi-user.target',
          `WantedBy=multi-user.target ${longUnit} ../../../../root/evil.target\nAlias="quoted ${payload()}".service\nRequiredBy=${payload()}`,
        ),
      );
    });
    const t0 = Date.now();
    const r = await prepare(image);
    assert.ok(Date.now() - t0 < 60_000);
    hasWarning(
      r,
      /^firewalld: DefaultZone "a{100,}.*\(\d{4} bytes\) in \/etc\/firewalld\/firewalld\.conf is not a valid zone name; SSH not opened$/,
    );
    hasWarning(r, /WantedBy="b+.*is not a valid unit name; ignored/);
    hasWarning(r, /WantedBy="\.\.\/\.\.\/\.\.\/\.\.\/root\/evil\.target" is not a valid unit name/);
    hasWarning(r, /Alias=.*quoted.*is not a valid unit name/);
    // SSH is still enabled through the valid WantedBy, and nothing was created outside /etc/systemd.
    assert.equal(await lstatType(image, '/etc/systemd/system/multi-user.target.wants/sshd.service'), 'symlink');
    assert.equal(await lstatType(image, '/root/evil.target.wants'), null);
    for (const c of r.changes) assert.match(c.path, /^\/(etc|boot)\//);
    assert.ok(JSON.stringify(r).length < 64 * 1024, 'result stays small');
    await e2fsckClean(image);
  });

  it('refuses unsafe paths and over-long command lines at the debugfs layer instead of splitting them', async () => {
    const image = await hostileImage(async () => undefined);
    const vol = new Ext4Volume(image, MiB);
    await assert.rejects(
      vol.stat(`/etc/${'x'.repeat(300)}`),
      (e: unknown) => e instanceof UnsafeGuestPathError && /longer than 255/.test(e.message),
    );
    await assert.rejects(vol.stat('/etc/a"b'), (e: unknown) => e instanceof UnsafeGuestPathError && /double quote/.test(e.message));
    await assert.rejects(
      vol.stat(`/etc/x\n${payload()}`),
      (e: unknown) => e instanceof UnsafeGuestPathError && /control character/.test(e.message),
    );
    const deep = '/' + Array.from({ length: 20 }, () => 'd'.repeat(250)).join('/');
    await assert.rejects(vol.stat(deep), (e: unknown) => e instanceof UnsafeGuestPathError && /longer than 3800 bytes/.test(e.message));
    await assert.rejects(
      vol.apply([{ op: 'symlink', path: '/etc/x', target: `/etc/${'y'.repeat(200)}/`.repeat(20) }]),
      (e: unknown) => e instanceof RestoreError && e.type === 'GuestPreparation',
    );
    // Names with spaces, single quotes and a `!` are valid ext4 names and stay usable.
    await vol.apply([{ op: 'write', path: "/etc/with space 'q' !bang", content: 'ok\n' }]);
    assert.equal(await vol.readText("/etc/with space 'q' !bang"), 'ok\n');
    await e2fsckClean(image);
  });

  it('skips directory entries with quotes and newlines, and edits those with spaces', async () => {
    const image = await hostileImage(async (root) => {
      const entry = 'title x\nlinux /boot/vmlinuz\noptions root=/dev/sda1 ro\n';
      await put(root, 'boot/loader/entries/with space.conf', entry);
      await put(root, 'boot/loader/entries/a "quoted" name.conf', entry);
      await put(root, `boot/loader/entries/new\n${payload()}.conf`, entry);
      await put(root, `boot/loader/entries/${payload().slice(0, 60)}.conf`, entry);
    });
    const r = await prepare(image);
    hasWarning(r, /\/boot\/loader\/entries: entry "a \\"quoted\\" name\.conf" has a name that cannot be handled safely; skipped/);
    hasWarning(r, /\/boot\/loader\/entries: entry "new\\n!touch .*" has a name that cannot be handled safely; skipped/);
    assert.match(
      (await cat(image, '/boot/loader/entries/with space.conf')).toString(),
      /^options root=UUID=\S+ ro console=ttyS0,115200n8 earlyprintk=ttyS0 net.ifnames=0$/m,
    );
    assert.ok(r.changes.some((c) => c.path === '/boot/loader/entries/with space.conf'));
    await e2fsckClean(image);
  });

  it('keeps long lines and `!` lines in file contents as data (grub, ifcfg, netplan-style content)', async () => {
    const long = `quiet ${'c'.repeat(10_000)} "${payload()}" 'q'`;
    const image = await hostileImage(async (root) => {
      await put(root, 'etc/default/grub', `${payload()}\nGRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="${long}"\n${'#'.repeat(9000)}${payload()}\n`);
      const ifcfg = await fsp.readFile(join(root, 'etc/sysconfig/network-scripts/ifcfg-eth0'), 'utf8');
      await put(root, 'etc/sysconfig/network-scripts/ifcfg-eth0', `${ifcfg}NAME="${'e'.repeat(9000)}"\n${payload()}\n`);
    });
    const r = await prepare(image);
    const grub = (await cat(image, '/etc/default/grub')).toString();
    assert.ok(
      grub.includes(`GRUB_CMDLINE_LINUX="${long.slice('quiet '.length)} console=ttyS0,115200n8 earlyprintk=ttyS0 net.ifnames=0"`),
      'argument appended to the 10 KB line',
    );
    assert.ok(grub.startsWith('!touch /tmp/pwned-'), 'lines starting with ! kept as text');
    const ifcfg = (await cat(image, '/etc/sysconfig/network-scripts/ifcfg-eth0')).toString();
    assert.match(ifcfg, /^BOOTPROTO=dhcp$/m);
    assert.ok(ifcfg.includes(`NAME="${'e'.repeat(9000)}"`));
    const grubChange = r.changes.find((c) => c.path === '/etc/default/grub');
    assert.ok(grubChange);
    assert.ok(
      grubChange.diff.every((l) => l.length <= 121 || /more changed lines/.test(l)),
      grubChange.diff.join('\n'),
    );
    await e2fsckClean(image);
  });

  it('parks a netplan file with an 8 KB interface name and `!` lines byte-exact', async () => {
    const nic = `ens${'x'.repeat(9000)}${payload().replace(/[ /#]/g, '_')}`;
    const yaml = `${payload()}\nnetwork:\n  ethernets:\n    ${nic}:\n      addresses:\n      - 10.1.2.3/24\n  version: 2\n${payload()}\n`;
    const image = await hostileImage(
      async (root) => {
        await put(root, 'etc/netplan/00-installer-config.yaml', yaml, 0o600);
      },
      { scheme: 'mbr', networkStyle: 'netplan', firewall: 'ufw', nicName: 'ens192' },
    );
    const r = await prepare(image);
    assert.equal(await lstatType(image, '/etc/netplan/00-installer-config.yaml'), null, 'static config parked');
    assert.equal((await cat(image, '/etc/netplan/00-installer-config.yaml.vmrestore-disabled')).toString(), yaml);
    assert.match((await cat(image, '/etc/netplan/90-vmrestore-azure-dhcp.yaml')).toString(), /dhcp4: true/);
    const parked = r.changes.find((c) => c.path.endsWith('.vmrestore-disabled'));
    assert.equal(parked?.sha256After, `sha256:${createHash('sha256').update(yaml).digest('hex')}`);
    assert.deepEqual(parked?.diff, [], 'a copied guest file is recorded by digest only');
    await e2fsckClean(image);
  });

  it('never edits through a symlink out of the file it means to change; loops do not hang', async () => {
    const shadow = 'root:$6$saltsalt$QmT4yLn1hZ3b8sPqkRzWcEjV0uXyN2aFgHdKsLpQrTuVwXyZ0123456789abcdefghijkl:19700:0:99999:7:::\n';
    const image = await hostileImage(async (root) => {
      await put(root, 'etc/shadow', shadow, 0o640);
      await link(root, 'etc/default/grub', '/etc/shadow');
      await put(root, 'root/netcfg', 'NETWORKING=yes\nGATEWAY=10.9.9.1\n');
      await link(root, 'etc/sysconfig/network', '../../root/netcfg');
      const ifcfg = await fsp.readFile(join(root, 'etc/sysconfig/network-scripts/ifcfg-eth0'), 'utf8');
      await fsp.rm(join(root, 'etc/sysconfig/network-scripts'), { recursive: true });
      await put(root, 'root/scripts/ifcfg-eth0', ifcfg);
      await link(root, 'etc/sysconfig/network-scripts', '/root/scripts');
      const env = '# GRUB Environment Block\nkernelopts=root=/dev/sda1 ro \n';
      await put(root, 'root/grubenv', env + '#'.repeat(1024 - env.length));
      await link(root, 'boot/grub2/grubenv', '../../root/grubenv');
      await link(root, 'etc/iptables/rules.v4', 'rules.v6');
      await link(root, 'etc/iptables/rules.v6', 'rules.v4');
      await link(root, 'etc/firewalld/zones/public.xml', 'public.xml');
    });
    const t0 = Date.now();
    const r = await prepare(image);
    assert.ok(Date.now() - t0 < 60_000, 'no hang on loops');
    hasWarning(r, /^\/etc\/default\/grub is a symlink to "\/etc\/shadow"; not followed, left unchanged/);
    hasWarning(r, /^\/etc\/sysconfig\/network is a symlink to "\/root\/netcfg"; not followed, left unchanged/);
    hasWarning(r, /^\/boot\/grub2\/grubenv is a symlink to "\/root\/grubenv"; not followed/);
    assert.match((await cat(image, '/root/grubenv')).toString(), /^kernelopts=root=\/dev\/sda1 ro $/m, 'target outside /boot untouched');
    hasWarning(
      r,
      /^\/etc\/sysconfig\/network-scripts\/ifcfg-eth0: directory \/etc\/sysconfig\/network-scripts is a symlink to "\/root\/scripts"; not followed/,
    );
    assert.equal((await cat(image, '/etc/shadow')).toString(), shadow, '/etc/shadow untouched');
    assert.equal((await cat(image, '/root/netcfg')).toString(), 'NETWORKING=yes\nGATEWAY=10.9.9.1\n');
    assert.match((await cat(image, '/root/scripts/ifcfg-eth0')).toString(), /^IPADDR=/m, 'file behind a directory symlink untouched');
    assert.equal(await lstatType(image, '/etc/default/grub'), 'symlink');
    assert.equal(await lstatType(image, '/etc/sysconfig/network'), 'symlink');
    for (const c of r.changes) assert.doesNotMatch(c.path, /shadow|\/root\//);
    assert.doesNotMatch(JSON.stringify(r), /QmT4yLn1hZ3b8sPq|saltsalt/, 'shadow content never recorded');
    await e2fsckClean(image);
  });

  it('does not slurp a multi-hundred-MB sparse config: skipped with a warning', async () => {
    const image = await hostileImage(async (root) => {
      const grub = join(root, 'etc/default/grub');
      await fsp.rm(grub);
      const fh = await fsp.open(grub, 'w');
      await fh.write('GRUB_CMDLINE_LINUX="quiet"\n');
      await fh.truncate(300 * MiB);
      await fh.close();
    });
    const t0 = Date.now();
    const r = await prepare(image);
    assert.ok(Date.now() - t0 < 60_000);
    hasWarning(
      r,
      new RegExp(
        `^/etc/default/grub: ${300 * MiB} bytes, over the ${MAX_GUEST_FILE_BYTES}-byte limit for configuration files; not read or changed$`,
      ),
    );
    assert.ok(!r.changes.some((c) => c.path === '/etc/default/grub'));
    assert.equal((await new Ext4Volume(image, MiB).stat('/etc/default/grub'))?.size, 300 * MiB);
    // The rest of the guest is still prepared.
    assert.ok(r.changes.some((c) => c.path === '/etc/fstab'));
  });

  it('refuses a damaged superblock with a clear error, without hanging', async () => {
    const image = await hostileImage(async () => undefined);
    const fh = await fsp.open(image, 'r+');
    // s_log_block_size = 20: the superblock keeps its magic but is nonsense.
    await fh.write(Buffer.from([20, 0, 0, 0]), 0, 4, MiB + 1024 + 24);
    await fh.close();
    await assert.rejects(prepare(image), (e: unknown) => {
      assert.ok(e instanceof RestoreError, String(e));
      assert.equal(e.type, 'GuestPreparation');
      assert.match(
        e.message,
        /no ext2\/3\/4 root filesystem .*partition 1: ext4 that cannot be opened \(debugfs cannot open .*superblock is corrupt/,
      );
      return true;
    });
    assert.ok(existsSync(image), 'image back in place after a failed run');
  });

  it('refuses GPT headers with absurd entry counts, sizes and locations', async () => {
    const image = await hostileImage(async () => undefined);
    const good = await readPartitionTable(image);
    assert.equal(good.partitions.length, 1);
    const patch = async (name: string, edit: (hdr: Buffer, entries: Buffer) => void) => {
      const copy = join(dir, `${name}.img`);
      await fsp.copyFile(image, copy);
      const fh = await fsp.open(copy, 'r+');
      const hdr = Buffer.alloc(92);
      await fh.read(hdr, 0, 92, 512);
      const entries = Buffer.alloc(128 * 128);
      await fh.read(entries, 0, entries.length, 1024);
      edit(hdr, entries);
      await fh.write(entries, 0, entries.length, 1024);
      hdr.writeUInt32LE(0, 16);
      hdr.writeUInt32LE(crc32(hdr), 16);
      await fh.write(hdr, 0, 92, 512);
      await fh.close();
      return copy;
    };
    const cases: [string, (h: Buffer, e: Buffer) => void, RegExp][] = [
      ['count', (h) => h.writeUInt32LE(0xffffffff, 80), /4294967295 entries of 128 bytes/],
      ['size', (h) => h.writeUInt32LE(0xfffffff0, 84), /entry size 4294967280 bytes/],
      ['size-odd', (h) => h.writeUInt32LE(200, 84), /entry size 200 bytes/],
      ['table-bytes', (h) => (h.writeUInt32LE(4096, 80), h.writeUInt32LE(4096, 84)), /4096 entries of 4096 bytes/],
      ['entries-lba', (h) => h.writeBigUInt64LE(1n << 40n, 72), /partition entries at LBA 1099511627776/],
      [
        'entry-range',
        (h, e) => {
          e.writeBigUInt64LE(1n << 50n, 40);
          h.writeUInt32LE(crc32(e), 88);
        },
        /entry 1 spans LBA 2048\.\.1125899906842624/,
      ],
      ['entries-crc', (_h, e) => e.writeUInt8(0x55, 200), /partition entry array CRC32 does not match/],
    ];
    for (const [name, edit, re] of cases) {
      const bad = await patch(name, edit);
      await assert.rejects(
        readPartitionTable(bad),
        (e: unknown) => e instanceof RestoreError && /implausible GPT/.test(e.message) && re.test(e.message),
        name,
      );
      await assert.rejects(
        prepareLinuxDiskDetailed(bad),
        (e: unknown) => e instanceof RestoreError && e.type === 'GuestPreparation' && re.test(e.message),
        name,
      );
    }
    const crcBad = join(dir, 'hdr-crc.img');
    await fsp.copyFile(image, crcBad);
    const fh = await fsp.open(crcBad, 'r+');
    await fh.write(Buffer.from([0xff, 0xff, 0xff, 0xff]), 0, 4, 512 + 80);
    await fh.close();
    await assert.rejects(readPartitionTable(crcBad), /implausible GPT: header CRC32 does not match/);
  });
});

describe('change records hold no guest secrets', { timeout: 300_000 }, () => {
  it('records digests and a short masked diff; no secret from the edited files reaches the result JSON', async () => {
    const secrets = [
      'TopSecret-7f3a9',
      '$6$saltsalt$',
      'Hunter2Secret',
      'TokenValue123',
      'ABCDEF0123456789ABCDEF0123456789',
      'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW',
    ];
    const image = await hostileImage(async (root) => {
      await put(
        root,
        'etc/default/grub',
        [
          'GRUB_TIMEOUT=5',
          `GRUB_CMDLINE_LINUX="rhgb quiet secret=TopSecret-7f3a9 rd.hash=$6$saltsalt$Xk3jd83kdk3ldk3 api_key=ABCDEF0123456789ABCDEF0123456789"`,
          'GRUB_PASSWORD=grub.pbkdf2.sha512.10000.ABCDEF0123456789ABCDEF0123456789',
          '',
        ].join('\n'),
      );
      const fstab = await fsp.readFile(join(root, 'etc/fstab'), 'utf8');
      await put(
        root,
        'etc/fstab',
        fstab.replace('/dev/sdb1       /srv/data       ext4    defaults', '/dev/sdb1 /srv/data ext4 defaults,password=Hunter2Secret'),
      );
      const ifcfg = await fsp.readFile(join(root, 'etc/sysconfig/network-scripts/ifcfg-eth0'), 'utf8');
      await put(root, 'etc/sysconfig/network-scripts/ifcfg-eth0', ifcfg.replace(/^IPADDR=(.*)$/m, 'IPADDR=$1 # token=TokenValue123'));
      await put(
        root,
        'etc/sysconfig/network',
        'NETWORKING=yes\nGATEWAY=10.0.0.1\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n',
      );
    });
    const before = (await cat(image, '/etc/default/grub')).toString();
    const r = await prepare(image);
    const json = JSON.stringify({ changes: r.changes, warnings: r.warnings });
    for (const s of secrets) assert.ok(!json.includes(s), `secret ${s} appears in the result: ${json}`);

    const grub = r.changes.find((c) => c.path === '/etc/default/grub');
    assert.ok(grub);
    assert.equal(grub.action, 'edit');
    assert.equal(grub.sha256Before, `sha256:${createHash('sha256').update(before).digest('hex')}`);
    assert.equal(
      grub.sha256After,
      `sha256:${createHash('sha256')
        .update(await cat(image, '/etc/default/grub'))
        .digest('hex')}`,
    );
    assert.equal(grub.diff.length, 2);
    assert.match(grub.diff[0]!, /^- GRUB_CMDLINE_LINUX="rhgb quiet secret=\*\*\* rd\.hash=\*\*\* api_key=\*\*\*/);
    assert.match(grub.diff[1]!, /^\+ GRUB_CMDLINE_LINUX="secret=\*\*\*/);
    const fstab = r.changes.find((c) => c.path === '/etc/fstab');
    assert.ok(
      fstab?.diff.some((l) => /password=\*\*\*/.test(l)),
      fstab?.diff.join('\n'),
    );
    for (const c of r.changes) {
      assert.ok(!('before' in c) && !('after' in c), 'no contents in a change');
      assert.ok(c.diff.length <= 7);
    }
  });

  it('masks secret-looking text and bounds diffs', () => {
    const cases: [string, RegExp][] = [
      ['password=hunter2', /^password=\*\*\*$/],
      ['  PasswordAuthentication: "s3cr3t"', /\*\*\*/],
      ['client_secret: abcd', /^client_secret: \*\*\*$/],
      ['root:$y$j9T$F5Jx5yqXq$3vH9:19700', /^root:\*\*\*:19700$/],
      ['-----BEGIN RSA PRIVATE KEY-----', /^\*\*\* \(private key material\)$/],
      ['Authorization: Bearer eyJhbGciOi.eyJzdWIi.sig', /^Authorization: \*\*\*[^e]*$/],
      ['X-Api: Bearer eyJhbGciOi.eyJzdWIi.sig', /^X-Api: Bearer \*\*\*$/],
      ['url=https://user:pa55@host/x', /user:\*\*\*@host/],
      ['https://acct.blob.core.windows.net/c/b?sv=2020&sig=AbC%2Bdef', /sig=\*\*\*/],
      ['wpa-psk 0123456789abcdef0123456789abcdef', /\*\*\*/],
    ];
    for (const [input, re] of cases) assert.match(maskSecrets(input), re, input);
    assert.equal(maskSecrets('GRUB_TIMEOUT=5'), 'GRUB_TIMEOUT=5');
    assert.equal(
      maskSecrets('UUID=1b4e28ba-2fa1-11d2-883f-0016d3cca427 / ext4 defaults 0 1'),
      'UUID=1b4e28ba-2fa1-11d2-883f-0016d3cca427 / ext4 defaults 0 1',
    );
    const a = Array.from({ length: 50 }, (_, i) => `line ${i}`).join('\n');
    const b = a.replace(/line (\d+)/g, 'LINE $1');
    const d = shortDiff(a, b);
    assert.equal(d.length, 7);
    assert.equal(d[6], '[94 more changed lines not recorded]');
    assert.ok(shortDiff('x', 'y'.repeat(500))[1]!.length <= 121);
  });
});

/** CRC-32 (IEEE), as GPT uses it. */
function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const byte of b) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * A hive whose root key holds the given dword values, names stored as Latin-1 (any length up to the
 * 16383 characters Windows allows): the empty hive from buildEmptyHive with its one hbin grown to fit a
 * value list and the vk cells.
 */
function hiveWithRootValues(values: { name: string; value: number }[]): Buffer {
  const empty = buildEmptyHive({ timestamp: new Date('2024-03-01T12:00:00Z') });
  const align8 = (x: number) => (x + 7) & ~7;
  let free = 0x20;
  while (empty.readInt32LE(0x1000 + free) < 0) free += -empty.readInt32LE(0x1000 + free);
  const listSize = align8(4 + 4 * values.length);
  const vkSizes = values.map((v) => align8(4 + 0x18 + v.name.length));
  const used = free + listSize + vkSizes.reduce((a, b) => a + b, 0);
  const binSize = Math.ceil((used + 8) / 4096) * 4096;
  const hive = Buffer.alloc(0x1000 + binSize);
  empty.copy(hive, 0, 0, 0x1000 + free);
  const bin = hive.subarray(0x1000);
  bin.writeUInt32LE(binSize, 8);
  hive.writeUInt32LE(binSize, 0x28);
  bin.writeInt32LE(-listSize, free);
  let at = free + listSize;
  values.forEach((v, i) => {
    bin.writeUInt32LE(at, free + 4 + 4 * i);
    bin.writeInt32LE(-vkSizes[i]!, at);
    const vk = bin.subarray(at + 4);
    vk.write('vk', 0, 'latin1');
    vk.writeUInt16LE(v.name.length, 2);
    vk.writeUInt32LE(0x80000004, 4); // 4 bytes of data, stored inline
    vk.writeUInt32LE(v.value, 8);
    vk.writeUInt32LE(4, 0x0c); // REG_DWORD
    vk.writeUInt16LE(1, 0x10); // name is Latin-1
    vk.write(v.name, 0x14, 'latin1');
    at += vkSizes[i]!;
  });
  bin.writeInt32LE(binSize - at, at);
  const nk = bin.subarray(0x20 + 4);
  nk.writeUInt32LE(values.length, 0x24);
  nk.writeUInt32LE(free, 0x28);
  let sum = 0;
  for (let i = 0; i < 0x1fc; i += 4) sum ^= hive.readUInt32LE(i);
  hive.writeUInt32LE(sum >>> 0, 0x1fc);
  return hive;
}

describe('hostile registry hives', () => {
  it('refuses value names hivexsh would split, so no name ever lands where a command is read', async () => {
    const target = payload().replace(/^!touch (\S+) #$/, '$1');
    // Before the line check, hivexsh's 8 KiB fgets split these names so that setval swallowed the
    // chunks as name/value pairs and the third name was read as a command: `commit <path>` writes
    // the hive wherever the guest says.
    const hexValue = `hex:4:${'0'.repeat(8184)}z`;
    const names = ['A'.repeat(8191) + hexValue + 'C', 'B'.repeat(8191) + hexValue + 'D', `commit ${target}`];
    const file = join(dir, 'huge-names.hive');
    await fsp.writeFile(file, hiveWithRootValues(names.map((name, i) => ({ name, value: i }))));
    await hiveToXml(file); // hivex itself accepts the hive
    const reader = await HiveReader.open(file);
    assert.deepEqual(
      reader.values('')!.map((v) => v.name.length),
      names.map((x) => x.length),
    );
    const bytes = await fsp.readFile(file);
    await assert.rejects(
      setHiveValues(file, [{ keyPath: '', name: 'fDenyTSConnections', value: { type: 'dword', value: 0 } }]),
      (e: unknown) => {
        assert.ok(e instanceof RestoreError, String(e));
        assert.equal(e.type, 'GuestPreparation');
        assert.match(e.message, /value name "A{80}"… \(16383 characters\) .* over hivexsh's 8000-byte line limit.*refused/);
        assert.ok(e.message.length < 600, 'the message does not carry the whole name');
        return true;
      },
    );
    assert.ok((await fsp.readFile(file)).equals(bytes), 'hive untouched');
    assert.equal(existsSync(target), false);

    const control = join(dir, 'control-name.hive');
    await fsp.writeFile(control, hiveWithRootValues([{ name: `x\n${payload()}`, value: 1 }]));
    await assert.rejects(
      setHiveValues(control, [{ keyPath: '', name: 'Other', value: { type: 'dword', value: 0 } }]),
      /registry value name "x\\n!touch .*" in <root> cannot be written back through hivexsh \(control characters or invalid text\); refused/,
    );
  });

  it('writes ordinary names with spaces, quotes, `#` and non-ASCII back byte-exact', async () => {
    const names = ['# not a comment', ' leading space', 'quote " and \\ backslash', 'Ünïcödé', '!bang'];
    const file = join(dir, 'ordinary.hive');
    await fsp.writeFile(file, hiveWithRootValues(names.map((name, i) => ({ name, value: i }))));
    assert.equal(await setHiveValues(file, [{ keyPath: '', name: '名前', value: { type: 'dword', value: 6 } }]), true);
    assert.equal(await setHiveValues(file, [{ keyPath: '', name: 'Added', value: { type: 'dword', value: 7 } }]), true);
    const got = (await HiveReader.open(file)).values('')!.map((v) => [v.name, v.data.readUInt32LE(0)]);
    assert.deepEqual(got, [...names.map((x, i) => [x, i]), ['名前', 6], ['Added', 7]]);
    await hiveToXml(file);
  });
});
