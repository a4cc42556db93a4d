import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { run } from '../../src/guest/exec';
import { prepareGuestDiskIsolated } from '../../src/guest/isolation';
import { buildLinuxDiskImage, type LinuxImage } from '../../src/lab/images/linux-image';
import { dataDiskFilesystems, prepareLinuxDisk, prepareLinuxDiskDetailed, readGuestFile } from '../../src/guest/linux/prep';

/**
 * Preparation that survives the platform's device naming, on real ext4 images: the VMware-era NIC
 * configuration is no longer brought up and DHCP comes up on the first NIC whatever the kernel names it,
 * data disks are mounted by filesystem UUID (on Azure /dev/sdb is the temporary disk), and no kernel
 * argument delays every boot.
 */

const MiB = 1024 * 1024;
const DATA_UUID = '5b0c1f5e-9d43-4c1e-8f53-2a8c4e7d9b10';
const VMWARE_MAC = '00:50:56:a1:5e:01';

let dir: string;
before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'guest-naming-'));
  // The unprivileged preparation process must reach the disks through it, as it reaches /dev.
  await fsp.chmod(dir, 0o755);
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

/** A data disk as the VMware VM had it: MBR, one ext4 partition at 1 MiB with a known UUID. */
async function dataDisk(name: string): Promise<string> {
  const p = join(dir, name);
  const fh = await fsp.open(p, 'w');
  await fh.truncate(32 * MiB);
  await fh.close();
  await run('sfdisk', ['--no-reread', '--no-tell-kernel', '-q', p], { input: 'label: dos\nstart=2048, type=83\n' });
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-U', DATA_UUID, '-E', `offset=${MiB}`, p, String((31 * MiB) / 4096)]);
  return p;
}

const PERSISTENT_NET = `SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="${VMWARE_MAC}", KERNEL=="eth*", NAME="ens192"\n`;

/** The Debian 12 guest of a VMware VM: ifupdown with a static ens192, fstab by /dev/sdX, initramfs-tools, rootdelay from an old guide. */
async function vmwareDebian(name: string, extra: (root: string) => Promise<void> = async () => {}): Promise<LinuxImage> {
  return buildLinuxDiskImage(join(dir, name), {
    sizeBytes: 96 * MiB,
    scheme: 'mbr',
    hostname: name,
    networkStyle: 'interfaces',
    firewall: 'iptables',
    usedMiB: 2,
    customize: async (root) => {
      const w = async (p: string, content: string) => {
        await fsp.mkdir(join(root, p, '..'), { recursive: true });
        await fsp.writeFile(join(root, p), content);
      };
      await w(
        '/etc/network/interfaces',
        [
          'source /etc/network/interfaces.d/*',
          '',
          'auto lo',
          'iface lo inet loopback',
          '',
          '# The primary network interface',
          'allow-hotplug ens192',
          'iface ens192 inet static',
          '\taddress 192.168.50.20/24',
          '\tgateway 192.168.50.1',
          '',
        ].join('\n'),
      );
      await w('/etc/network/interfaces.d/backup', 'auto ens224\niface ens224 inet static\n\taddress 10.9.9.9/24\n');
      await w(
        '/etc/fstab',
        '/dev/sda1\t/\text4\terrors=remount-ro\t0\t1\n/dev/sdb1\t/srv/data\text4\tdefaults\t0\t2\n/dev/sdc1\t/srv/gone\text4\tdefaults\t0\t2\n',
      );
      await w('/etc/udev/rules.d/70-persistent-net.rules', PERSISTENT_NET);
      await w('/etc/default/grub', 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX="rootdelay=300"\n');
      await w('/usr/share/initramfs-tools/init', '#!/bin/sh\nif [ "$ROOTDELAY" ]; then\n\tsleep "$ROOTDELAY"\nfi\n');
      await extra(root);
    },
  });
}

describe('Linux preparation that survives the platform device naming', () => {
  it('ifupdown: the static ens192 stanza is commented out, DHCP on eth0 with net.ifnames=0, data disk by UUID with nofail, no rootdelay', async () => {
    const img = await vmwareDebian('deb-ifupdown');
    const data = await dataDisk('deb-ifupdown-data.img');
    const off = img.rootPartitionOffset;
    const disks = await dataDiskFilesystems([data]);
    assert.deepEqual(disks, [{ diskIndex: 1, filesystems: [{ partition: 1, type: 'ext4', uuid: DATA_UUID }] }]);

    const r = await prepareLinuxDiskDetailed(img.imagePath, { dataDisks: disks });
    const ifaces = (await readGuestFile(img.imagePath, off, '/etc/network/interfaces'))!;
    assert.match(ifaces, /^# vmrestore-disabled: allow-hotplug ens192$/m);
    assert.match(ifaces, /^# vmrestore-disabled: iface ens192 inet static$/m);
    assert.match(ifaces, /^# vmrestore-disabled: \taddress 192\.168\.50\.20\/24$/m);
    assert.match(ifaces, /^auto eth0\niface eth0 inet dhcp$/m);
    for (const l of ifaces.split('\n').filter((x) => !x.startsWith('#'))) assert.doesNotMatch(l, /ens192|192\.168\.50/, l);
    const part = (await readGuestFile(img.imagePath, off, '/etc/network/interfaces.d/backup'))!;
    assert.equal(
      part,
      '# vmrestore-disabled: auto ens224\n# vmrestore-disabled: iface ens224 inet static\n# vmrestore-disabled: \taddress 10.9.9.9/24\n',
    );
    const ifChange = r.changes.find((c) => c.path === '/etc/network/interfaces')!;
    assert.match(ifChange.description, /net\.ifnames=0/, 'the change list says which way was taken');
    assert.match(ifChange.description, /ens192/);

    const fstab = (await readGuestFile(img.imagePath, off, '/etc/fstab'))!;
    assert.match(fstab, new RegExp(`^UUID=${img.rootFsUuid}\\t/\\text4\\terrors=remount-ro\\t0\\t1$`, 'm'));
    assert.match(fstab, new RegExp(`^UUID=${DATA_UUID}\\t/srv/data\\text4\\tdefaults,nofail\\t0\\t2$`, 'm'), fstab);
    // No restored disk behind /dev/sdc: it stays a device name, and must not stop the boot.
    assert.match(fstab, /^\/dev\/sdc1\t\/srv\/gone\text4\tdefaults,nofail\t0\t2$/m);
    assert.doesNotMatch(fstab, /\/dev\/sdb/, 'nothing names the device that is the temporary disk on Azure');

    const grub = (await readGuestFile(img.imagePath, off, '/etc/default/grub'))!;
    assert.match(grub, /^GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 earlyprintk=ttyS0 net\.ifnames=0"$/m);
    assert.doesNotMatch(grub, /rootdelay/);
    assert.match(grub, /^GRUB_CMDLINE_LINUX_DEFAULT=""$/m, 'quiet removed: the boot shows on the serial console');
    const grubChange = r.changes.find((c) => c.path === '/etc/default/grub')!;
    assert.match(grubChange.description, /remove rootdelay \(initramfs-tools sleeps/);
    const cfg = await readGuestFile(img.imagePath, off, '/boot/grub/grub.cfg');
    if (cfg !== null) {
      for (const l of cfg.split('\n').filter((x) => /^\s*linux\s/.test(x))) {
        assert.match(l, /console=ttyS0,115200n8 earlyprintk=ttyS0 net\.ifnames=0/);
        assert.doesNotMatch(l, /rootdelay|\bquiet\b/);
      }
    }
    assert.equal(await readGuestFile(img.imagePath, off, '/etc/udev/rules.d/70-persistent-net.rules'), null, 'MAC-pinned names removed');

    assert.deepEqual(await prepareLinuxDisk(img.imagePath, { dataDisks: disks }), [], 'a second run changes nothing');
  });

  it('without the data disks, a /dev/sdb line gets nofail but cannot be named by UUID', async () => {
    const img = await vmwareDebian('deb-nodata');
    await prepareLinuxDisk(img.imagePath);
    const fstab = (await readGuestFile(img.imagePath, img.rootPartitionOffset, '/etc/fstab'))!;
    assert.match(fstab, /^\/dev\/sdb1\t\/srv\/data\text4\tdefaults,nofail\t0\t2$/m);
  });

  it('systemd-networkd: the static .network is parked, DHCP matched by type and name pattern, networkd enabled', async () => {
    const img = await vmwareDebian('deb-networkd', async (root) => {
      await fsp.rm(join(root, 'etc/network'), { recursive: true, force: true });
      await fsp.mkdir(join(root, 'etc/systemd/network'), { recursive: true });
      await fsp.writeFile(
        join(root, 'etc/systemd/network/10-ens160.network'),
        '[Match]\nName=ens160\n\n[Network]\nAddress=192.168.60.20/24\nGateway=192.168.60.1\n',
      );
      await fsp.writeFile(join(root, 'etc/systemd/network/20-dhcp-wlan.network'), '[Match]\nName=wl*\n\n[Network]\nDHCP=yes\n');
      await fsp.mkdir(join(root, 'lib/systemd/system'), { recursive: true });
      await fsp.writeFile(
        join(root, 'lib/systemd/system/systemd-networkd.service'),
        '[Unit]\nDescription=Network Configuration\n[Install]\nWantedBy=multi-user.target\n',
      );
    });
    const off = img.rootPartitionOffset;
    const r = await prepareLinuxDiskDetailed(img.imagePath);
    assert.equal(await readGuestFile(img.imagePath, off, '/etc/systemd/network/10-ens160.network'), null, 'static file parked');
    assert.match(
      (await readGuestFile(img.imagePath, off, '/etc/systemd/network/10-ens160.network.vmrestore-disabled'))!,
      /Address=192\.168\.60\.20/,
    );
    assert.ok(await readGuestFile(img.imagePath, off, '/etc/systemd/network/20-dhcp-wlan.network'), 'a DHCP file stays');
    const ours = (await readGuestFile(img.imagePath, off, '/etc/systemd/network/05-vmrestore-azure-dhcp.network'))!;
    assert.match(ours, /^\[Match\]\nType=ether\nName=eth\* en\*\n/m);
    assert.match(ours, /^Driver=!mlx4_core mlx4_en mlx5_core mana$/m);
    assert.match(ours, /^DHCP=ipv4$/m);
    assert.ok(
      r.changes.some((c) => c.path === '/etc/systemd/system/multi-user.target.wants/systemd-networkd.service'),
      'networkd enabled',
    );
    assert.ok(!r.warnings.some((w) => /DHCP not configured/.test(w)), r.warnings.join('\n'));
    assert.deepEqual(await prepareLinuxDisk(img.imagePath), []);
  });

  it('dracut guests: no rootdelay added, an existing one left alone (dracut does not sleep on it)', async () => {
    const img = await vmwareDebian('el-dracut', async (root) => {
      await fsp.rm(join(root, 'usr/share/initramfs-tools'), { recursive: true, force: true });
      await fsp.mkdir(join(root, 'usr/lib/dracut/modules.d'), { recursive: true });
      await fsp.writeFile(join(root, 'usr/lib/dracut/dracut-version.sh'), 'DRACUT_VERSION=059\n');
      await fsp.writeFile(join(root, 'etc/default/grub'), 'GRUB_CMDLINE_LINUX="rootdelay=10 crashkernel=auto"\n');
    });
    await prepareLinuxDisk(img.imagePath);
    const grub = (await readGuestFile(img.imagePath, img.rootPartitionOffset, '/etc/default/grub'))!;
    assert.equal(grub, 'GRUB_CMDLINE_LINUX="rootdelay=10 crashkernel=auto console=ttyS0,115200n8 earlyprintk=ttyS0 net.ifnames=0"\n');
  });

  it('isolated preparation of attached devices: edits the disk behind the LUN link in place and gives it back as it was', async () => {
    const img = await vmwareDebian('deb-device');
    const data = await dataDisk('deb-device-data.img');
    const root = join(dir, 'devroot', 'scsi1');
    await fsp.mkdir(root, { recursive: true });
    await fsp.symlink(img.imagePath, join(root, 'lun0'));
    await fsp.symlink(data, join(root, 'lun1'));
    await fsp.chmod(img.imagePath, 0o640);
    const before = await fsp.stat(img.imagePath);
    const dataBefore = await fsp.readFile(data);
    const r = await prepareGuestDiskIsolated(
      { osType: 'Linux', imagePath: join(root, 'lun0'), dataDiskPaths: [join(root, 'lun1')] },
      { devices: true, timeoutMs: 120_000 },
    );
    assert.ok(r.changes.length > 0);
    if (process.getuid?.() === 0) assert.equal(r.sandbox.uid, 65534, 'the child ran unprivileged');
    const fstab = (await readGuestFile(img.imagePath, img.rootPartitionOffset, '/etc/fstab'))!;
    assert.match(fstab, new RegExp(`^UUID=${DATA_UUID}\\t/srv/data\\t`, 'm'), 'the data disk was read through its device');
    const after = await fsp.stat(img.imagePath);
    assert.deepEqual([after.uid, after.gid, after.mode & 0o7777], [before.uid, before.gid, 0o640], 'owner and mode put back');
    assert.equal(after.ino, before.ino, 'edited in place, not replaced');
    assert.ok((await fsp.readFile(data)).equals(dataBefore), 'the data disk is only read');
    assert.ok((await fsp.lstat(join(root, 'lun0'))).isSymbolicLink(), 'the link stays');

    await assert.rejects(
      prepareGuestDiskIsolated({ osType: 'Linux', imagePath: join(root, 'lun0'), dataDiskPaths: [join(root, 'lun0')] }, { devices: true }),
      /resolve to the same device/,
    );
    await assert.rejects(
      prepareGuestDiskIsolated({ osType: 'Linux', imagePath: join(root, 'lun7') }, { devices: true }),
      /OS disk device .*lun7 does not exist/,
    );
    await assert.rejects(
      prepareGuestDiskIsolated({ osType: 'Linux', imagePath: img.imagePath, dataDiskPaths: [data] }),
      /only as attached devices/,
    );
  });
});
