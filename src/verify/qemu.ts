import { existsSync } from 'node:fs';
import { FailureType, RestoreError } from '../domain/errors';
import type { Firmware } from '../domain/vm';

/** The repository's `Firmware`: `bios` boots SeaBIOS (Azure Generation 1), `efi` OVMF (Generation 2). */
export type BootFirmware = Firmware;
export type ScsiController = 'virtio-scsi' | 'lsi' | 'pvscsi';
export type NicModel = 'virtio-net-pci' | 'vmxnet3' | 'e1000' | 'e1000e' | 'rtl8139';

export interface OvmfFiles {
  code: string;
  /** The template of the variable store; each boot gets its own copy. */
  vars: string;
}

/** pflash pairs of the distributions' OVMF packages, 4 MiB builds first (Debian's `ovmf`). */
const OVMF_CANDIDATES: OvmfFiles[] = [
  { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
  { code: '/usr/share/OVMF/OVMF_CODE.fd', vars: '/usr/share/OVMF/OVMF_VARS.fd' },
  { code: '/usr/share/edk2/ovmf/OVMF_CODE.fd', vars: '/usr/share/edk2/ovmf/OVMF_VARS.fd' },
  { code: '/usr/share/edk2/x64/OVMF_CODE.fd', vars: '/usr/share/edk2/x64/OVMF_VARS.fd' },
];

/** The OVMF code and variable-store template: `VMRESTORE_OVMF_CODE`/`_VARS`, else the packaged files. */
export function findOvmf(): OvmfFiles {
  const code = process.env.VMRESTORE_OVMF_CODE;
  const vars = process.env.VMRESTORE_OVMF_VARS;
  if (code || vars) {
    if (!code || !vars || !existsSync(code) || !existsSync(vars)) {
      throw new RestoreError(
        FailureType.Configuration,
        `VMRESTORE_OVMF_CODE=${code ?? ''} and VMRESTORE_OVMF_VARS=${vars ?? ''} must both name existing files`,
      );
    }
    return { code, vars };
  }
  const hit = OVMF_CANDIDATES.find((c) => existsSync(c.code) && existsSync(c.vars));
  if (!hit) {
    throw new RestoreError(
      FailureType.Configuration,
      `no OVMF firmware found (looked for ${OVMF_CANDIDATES.map((c) => c.code).join(', ')}); install the Debian package ovmf`,
    );
  }
  return hit;
}

export interface QemuDisk {
  path: string;
  format: 'raw' | 'qcow2' | 'vpc';
}

export interface QemuLayout {
  firmware: BootFirmware;
  ovmf?: { code: string; varsCopy: string };
  cpus: number;
  memoryMiB: number;
  disks: QemuDisk[];
  scsiController: ScsiController;
  nic: { model: NicModel; mac: string };
  /** `-netdev user` options beyond id, e.g. `net=...`, `host=...`, `hostfwd=...`. */
  userNet: string[];
  serialLog: string;
  firmwareLog: string;
  pcap: string;
  qmpSocket: string;
}

const SCSI_DEVICE: Record<ScsiController, string> = {
  'virtio-scsi': 'virtio-scsi-pci',
  lsi: 'lsi53c895a',
  pvscsi: 'pvscsi',
};

/** qemu's option syntax doubles commas inside values. */
function optValue(v: string): string {
  return v.replace(/,/g, ',,');
}

/**
 * The qemu-system-x86_64 command line: TCG (no KVM is assumed), q35, the disks in the given order as
 * SCSI targets 0, 1, ... of one controller (the first is the boot disk), one NIC on an isolated user-mode
 * network, the serial port and the firmware's debug port into files, and a QMP socket.
 */
export function qemuArgs(l: QemuLayout): string[] {
  const args = [
    '-accel',
    'tcg,thread=multi',
    '-cpu',
    'max',
    '-smp',
    String(l.cpus),
    '-m',
    String(l.memoryMiB),
    '-machine',
    'q35',
    '-nodefaults',
    '-no-user-config',
    '-vga',
    'std',
    '-display',
    'none',
    '-chardev',
    `file,id=serial0,path=${optValue(l.serialLog)}`,
    '-serial',
    'chardev:serial0',
    // SeaBIOS (and debug builds of OVMF) log to I/O port 0x402.
    '-chardev',
    `file,id=fwlog,path=${optValue(l.firmwareLog)}`,
    '-device',
    'isa-debugcon,iobase=0x402,chardev=fwlog',
    '-qmp',
    `unix:${optValue(l.qmpSocket)},server=on,wait=off`,
    // Host entropy, as vSphere and Azure hosts give their guests: under TCG alone the kernel's random pool
    // can take minutes to initialise, and sshd waits for it.
    '-device',
    'virtio-rng-pci',
  ];
  if (l.firmware === 'efi') {
    if (!l.ovmf) throw new Error('uefi layout without OVMF files');
    args.push(
      '-drive',
      `if=pflash,format=raw,unit=0,readonly=on,file=${optValue(l.ovmf.code)}`,
      '-drive',
      `if=pflash,format=raw,unit=1,file=${optValue(l.ovmf.varsCopy)}`,
    );
  }
  args.push('-device', `${SCSI_DEVICE[l.scsiController]},id=scsi0`);
  l.disks.forEach((d, i) => {
    // snapshot=on: writes go to a temporary overlay, the verified disks stay as they are.
    args.push(
      '-drive',
      `if=none,id=disk${i},file=${optValue(d.path)},format=${d.format},snapshot=on,cache=unsafe`,
      '-device',
      `scsi-hd,drive=disk${i},bus=scsi0.0,scsi-id=${i},lun=0${i === 0 ? ',bootindex=0' : ''}`,
    );
  });
  args.push(
    '-netdev',
    ['user', 'id=net0', ...l.userNet].join(','),
    '-device',
    `${l.nic.model},netdev=net0,mac=${l.nic.mac}`,
    '-object',
    `filter-dump,id=netdump0,netdev=net0,file=${optValue(l.pcap)}`,
  );
  return args;
}
