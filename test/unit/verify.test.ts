import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RestoreError } from '../../src/domain/errors';
import { promises as fsp } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GUEST_RECIPES, guestVmJson, type GuestImage } from '../../src/lab/guests';
import { debianMirror, parseDeb822Sources, parseOneLineSources } from '../../src/lab/guests/mirror';
import { readVmJson } from '../../src/repository/vm-json';
import { readGuestTraffic, resolveNetwork, verifyBoot } from '../../src/verify';
import { verifyRequestFromArgs } from '../../src/cli/verify-command';
import { qemuArgs } from '../../src/verify/qemu';
import { defaultBootCpus } from '../../src/verify/boot';

const GUEST = '00:50:56:a1:5e:01';
const SLIRP = '52:55:0a:00:02:02';

function macBytes(m: string): Buffer {
  return Buffer.from(m.split(':').map((x) => parseInt(x, 16)));
}

function ipBytes(ip: string): Buffer {
  return Buffer.from(ip.split('.').map(Number));
}

/** An Ethernet + IPv4 + UDP frame carrying a BOOTP/DHCP message, built by hand from the RFCs. */
function dhcpFrame(src: string, dst: string, fromServer: boolean, type: number, yiaddr: string, chaddr: string): Buffer {
  const bootp = Buffer.alloc(244);
  bootp[0] = fromServer ? 2 : 1;
  bootp[1] = 1;
  bootp[2] = 6;
  ipBytes(yiaddr).copy(bootp, 16);
  macBytes(chaddr).copy(bootp, 28);
  bootp.writeUInt32BE(0x63825363, 236);
  Buffer.from([53, 1, type, 255]).copy(bootp, 240);
  const udp = Buffer.alloc(8);
  udp.writeUInt16BE(fromServer ? 67 : 68, 0);
  udp.writeUInt16BE(fromServer ? 68 : 67, 2);
  udp.writeUInt16BE(8 + bootp.length, 4);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(20 + 8 + bootp.length, 2);
  ip[8] = 64;
  ip[9] = 17;
  ipBytes(fromServer ? '10.0.2.2' : '0.0.0.0').copy(ip, 12);
  ipBytes('255.255.255.255').copy(ip, 16);
  return Buffer.concat([macBytes(dst), macBytes(src), Buffer.from([0x08, 0x00]), ip, udp, bootp]);
}

function arpFrame(src: string, senderIp: string, targetIp: string): Buffer {
  const arp = Buffer.alloc(28);
  arp.writeUInt16BE(1, 0);
  arp.writeUInt16BE(0x0800, 2);
  arp[4] = 6;
  arp[5] = 4;
  arp.writeUInt16BE(1, 6);
  macBytes(src).copy(arp, 8);
  ipBytes(senderIp).copy(arp, 14);
  ipBytes(targetIp).copy(arp, 24);
  return Buffer.concat([macBytes('ff:ff:ff:ff:ff:ff'), macBytes(src), Buffer.from([0x08, 0x06]), arp]);
}

function pcap(frames: { atMs: number; frame: Buffer }[]): Buffer {
  const header = Buffer.alloc(24);
  header.writeUInt32LE(0xa1b2c3d4, 0);
  header.writeUInt16LE(2, 4);
  header.writeUInt16LE(4, 6);
  header.writeUInt32LE(65535, 16);
  header.writeUInt32LE(1, 20);
  const records = frames.map(({ atMs, frame }) => {
    const r = Buffer.alloc(16);
    r.writeUInt32LE(Math.floor(atMs / 1000), 0);
    r.writeUInt32LE((atMs % 1000) * 1000, 4);
    r.writeUInt32LE(frame.length, 8);
    r.writeUInt32LE(frame.length, 12);
    return Buffer.concat([r, frame]);
  });
  return Buffer.concat([header, ...records]);
}

describe('guest traffic from the verification pcap', () => {
  it('finds the DHCP exchange and the address the guest then speaks from', () => {
    const t0 = 1_700_000_000_000;
    const traffic = readGuestTraffic(
      pcap([
        { atMs: t0, frame: dhcpFrame(GUEST, 'ff:ff:ff:ff:ff:ff', false, 1, '0.0.0.0', GUEST) },
        { atMs: t0 + 5, frame: dhcpFrame(SLIRP, GUEST, true, 2, '10.0.2.15', GUEST) },
        { atMs: t0 + 10, frame: dhcpFrame(GUEST, 'ff:ff:ff:ff:ff:ff', false, 3, '0.0.0.0', GUEST) },
        { atMs: t0 + 15, frame: dhcpFrame(SLIRP, GUEST, true, 5, '10.0.2.15', GUEST) },
        { atMs: t0 + 20, frame: arpFrame(GUEST, '10.0.2.15', '10.0.2.2') },
      ]),
      GUEST.toUpperCase(),
    );
    assert.deepEqual(
      traffic.dhcp.map((d) => [d.type, d.yourAddress, d.atMs - t0]),
      [
        ['discover', '0.0.0.0', 0],
        ['offer', '10.0.2.15', 5],
        ['request', '0.0.0.0', 10],
        ['ack', '10.0.2.15', 15],
      ],
    );
    assert.equal(traffic.framesFromGuest, 3);
    assert.deepEqual(traffic.guestAddresses, ['10.0.2.15']);
    assert.equal(traffic.firstGuestFrameMs, t0);
  });

  it('reports a static guest by its ARP source and a silent one as no frames; a cut last record is ignored', () => {
    const stat = pcap([{ atMs: 1000, frame: arpFrame(GUEST, '192.168.50.20', '192.168.50.1') }]);
    assert.deepEqual(readGuestTraffic(stat, GUEST).guestAddresses, ['192.168.50.20']);
    assert.equal(readGuestTraffic(stat.subarray(0, stat.length - 3), GUEST).framesFromGuest, 0);
    const other = readGuestTraffic(pcap([{ atMs: 1000, frame: arpFrame(SLIRP, '10.0.2.2', '10.0.2.15') }]), GUEST);
    assert.equal(other.framesFromGuest, 0);
    assert.deepEqual(other.guestAddresses, []);
    assert.throws(() => readGuestTraffic(Buffer.alloc(40, 1), GUEST), /not a pcap/);
  });
});

describe('verification network and qemu command line', () => {
  it('fills in qemu user-mode defaults and refuses addresses outside the subnet', () => {
    assert.deepEqual(resolveNetwork(), { subnet: '10.0.2.0/24', host: '10.0.2.2', dhcpStart: '10.0.2.15', guestAddress: '10.0.2.15' });
    assert.deepEqual(resolveNetwork({ subnet: '192.168.50.7/24', host: '192.168.50.1', guestAddress: '192.168.50.20' }), {
      subnet: '192.168.50.0/24',
      host: '192.168.50.1',
      dhcpStart: '192.168.50.15',
      guestAddress: '192.168.50.20',
    });
    assert.throws(
      () => resolveNetwork({ subnet: '192.168.50.0/24', guestAddress: '192.168.60.20' }),
      /guestAddress 192\.168\.60\.20 is not a host address of 192\.168\.50\.0\/24/,
    );
    assert.throws(() => resolveNetwork({ subnet: '192.168.50.0' }), /network\.subnet '192\.168\.50\.0'/);
    assert.throws(() => resolveNetwork({ subnet: '10.0.0.0/16', host: '10.0.255.255' }), /not a host address/);
  });

  it('puts the disks on one SCSI controller in the given order and boots the first', () => {
    const args = qemuArgs({
      firmware: 'efi',
      ovmf: { code: '/fw/CODE.fd', varsCopy: '/w/VARS,copy.fd' },
      cpus: 2,
      memoryMiB: 2048,
      disks: [
        { path: '/d/os.img', format: 'raw' },
        { path: '/d/resource.img', format: 'raw' },
        { path: '/d/data.vhd', format: 'vpc' },
      ],
      scsiController: 'lsi',
      nic: { model: 'vmxnet3', mac: GUEST },
      userNet: ['restrict=on', 'hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22'],
      serialLog: '/w/serial.log',
      firmwareLog: '/w/fw.log',
      pcap: '/w/net.pcap',
      qmpSocket: '/tmp/q.sock',
    });
    const joined = args.join(' ');
    assert.match(joined, /-accel tcg/);
    assert.match(joined, /-device lsi53c895a,id=scsi0/);
    assert.match(joined, /file=\/w\/VARS,,copy\.fd/, 'commas in paths are doubled');
    const devices = args.filter((a) => a.startsWith('scsi-hd,'));
    assert.deepEqual(devices, [
      'scsi-hd,drive=disk0,bus=scsi0.0,scsi-id=0,lun=0,bootindex=0',
      'scsi-hd,drive=disk1,bus=scsi0.0,scsi-id=1,lun=0',
      'scsi-hd,drive=disk2,bus=scsi0.0,scsi-id=2,lun=0',
    ]);
    assert.ok(args.includes('if=none,id=disk2,file=/d/data.vhd,format=vpc,snapshot=on,cache=unsafe'));
    assert.ok(args.includes(`vmxnet3,netdev=net0,mac=${GUEST}`));
    assert.ok(args.includes('user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-10.0.2.15:22'));
  });

  it('gives each guest its share of the host cores, one or two vCPUs', () => {
    assert.equal(defaultBootCpus(2, 2), 1, 'two boots on two cores: one vCPU thread per core');
    assert.equal(defaultBootCpus(1, 2), 1);
    assert.equal(defaultBootCpus(3, 2), 1);
    assert.equal(defaultBootCpus(4, 2), 2);
    assert.equal(defaultBootCpus(64, 2), 2, 'at most two');
    assert.equal(defaultBootCpus(2, 1), 2);
  });

  it('refuses a boot without disks, with a missing image or a multicast MAC, naming the input', async () => {
    const base = { name: 'bad', firmware: 'bios' as const, nic: { mac: GUEST } };
    await assert.rejects(async () => verifyBoot({ ...base, disks: [] }), /boot 'bad' has no disks/);
    await assert.rejects(
      async () => verifyBoot({ ...base, disks: [{ path: '/nonexistent/os.img' }] }),
      (e: unknown) => e instanceof RestoreError && e.type === 'NotFound' && /\/nonexistent\/os\.img/.test(e.message),
    );
    await assert.rejects(
      async () => verifyBoot({ ...base, disks: [{ path: __filename }], nic: { mac: '01:00:5e:00:00:01' } }),
      /not a unicast MAC/,
    );
    await assert.rejects(async () => verifyBoot({ ...base, name: 'a b', disks: [{ path: __filename }] }), /boot name 'a b'/);
  });
});

describe('Debian mirror from the apt sources', () => {
  it('reads deb822 and one-line sources and picks the first HTTP source of the suite', () => {
    const deb822 = parseDeb822Sources(
      [
        'Types: deb',
        '# a comment',
        'URIs: http://mirror.example/debian',
        'Suites: bookworm bookworm-updates',
        'Components: main contrib',
        '',
        'Types: deb-src',
        'URIs: http://src.example/debian',
        'Suites: bookworm',
        'Components: main',
        '',
        'Types: deb',
        'URIs: http://security.example/debian-security',
        'Suites: bookworm-security',
        'Components: main',
      ].join('\n'),
      'x.sources',
    );
    assert.deepEqual(
      deb822.map((s) => s.uri),
      ['http://mirror.example/debian', 'http://security.example/debian-security'],
    );
    const oneLine = parseOneLineSources(
      'deb [arch=amd64 signed-by=/k.gpg] https://other.example/debian bookworm main # x\n# deb http://old bookworm main\n',
      'y.list',
    );
    assert.deepEqual(oneLine, [{ uri: 'https://other.example/debian', suites: ['bookworm'], components: ['main'], file: 'y.list' }]);
    const saved = process.env.VMRESTORE_DEBIAN_MIRROR;
    delete process.env.VMRESTORE_DEBIAN_MIRROR;
    try {
      assert.equal(debianMirror('bookworm', [...deb822, ...oneLine]), 'http://mirror.example/debian');
      assert.equal(debianMirror('bookworm', oneLine), 'https://other.example/debian');
      assert.throws(() => debianMirror('trixie', deb822), /no apt source serves Debian 'trixie' main .*x\.sources/);
    } finally {
      if (saved !== undefined) process.env.VMRESTORE_DEBIAN_MIRROR = saved;
    }
  });
});

describe('vmrestore verify command line', () => {
  it('describes a boot of a disk set with the target NIC and network, and refuses bad values by name', async () => {
    const req = await verifyRequestFromArgs(
      [
        '--firmware',
        'efi',
        '--disk',
        '/d/os.vhd',
        '--disk',
        '/d/res.img',
        '--mac',
        '00:0d:3a:00:00:01',
        '--scsi',
        'lsi',
        '--no-serial',
        '--timeout',
        '90',
      ],
      () => {},
    );
    assert.deepEqual(req.disks, [
      { path: '/d/os.vhd', format: 'vpc' },
      { path: '/d/res.img', format: 'raw' },
    ]);
    assert.equal(req.firmware, 'efi');
    assert.equal(req.scsiController, 'lsi');
    assert.deepEqual(req.expect, { dhcp: true, serialConsole: false });
    assert.equal(req.timeoutMs, 90_000);
    await assert.rejects(
      verifyRequestFromArgs(['--firmware', 'uefi'], () => {}),
      /--firmware must be bios or efi \(got 'uefi'\)/,
    );
    await assert.rejects(
      verifyRequestFromArgs(['--firmware', 'bios', '--mac', GUEST], () => {}),
      /at least one --disk/,
    );
    await assert.rejects(
      verifyRequestFromArgs(['--firmware', 'bios', '--disk', 'x', '--mac', GUEST, '--scsi', 'ide'], () => {}),
      /--scsi 'ide'/,
    );
    await assert.rejects(
      verifyRequestFromArgs(['--guest', 'debian11'], () => {}),
      /--guest 'debian11' must be one of debian12-bios, debian12-uefi/,
    );
  });
});

describe('lab guests as repository VMs', () => {
  it('gives a vm.json the repository accepts: firmware, the persistent-net MAC, OS then data disk', async () => {
    const dir = await fsp.mkdtemp(join(tmpdir(), 'guest-vmjson-'));
    try {
      const r = GUEST_RECIPES['debian12-uefi'];
      const image = {
        firmware: r.firmware,
        osDisk: join(dir, 'os.img'),
        dataDisk: join(dir, 'data.img'),
        network: { mac: r.mac },
      } as GuestImage;
      await fsp.writeFile(image.osDisk, Buffer.alloc(1024 * 1024));
      await fsp.writeFile(image.dataDisk, Buffer.alloc(512 * 1024));
      await fsp.writeFile(join(dir, 'vm.json'), JSON.stringify(guestVmJson(image, 'demo-deb12-uefi')));
      const { vm, diskImagePaths } = await readVmJson(join(dir, 'vm.json'));
      assert.equal(vm.firmware, 'efi');
      assert.deepEqual(vm.nics, [{ network: 'VM Network', macAddress: r.mac }]);
      assert.deepEqual(diskImagePaths, [image.osDisk, image.dataDisk]);
      assert.deepEqual(
        vm.disks.map((d) => [d.label, d.capacityBytes]),
        [
          ['root', 1024 * 1024],
          ['data', 512 * 1024],
        ],
      );
    } finally {
      await fsp.rm(dir, { recursive: true, force: true });
    }
  });
});
