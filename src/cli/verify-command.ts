import { parseArgs } from 'node:util';
import { FailureType, RestoreError } from '../domain/errors';
import { labGuestNames, loadLabGuests } from './lab-door';
import { verifyBoot, type BootReport, type BootRequest } from '../verify/boot';
import type { NicModel, ScsiController } from '../verify/qemu';

export const VERIFY_USAGE = `  vmrestore verify --firmware bios|efi --disk IMAGE [--disk IMAGE]... --mac MAC [--nic-model M]
        [--scsi virtio-scsi|lsi|pvscsi] [--subnet CIDR] [--gateway IP] [--guest-address IP]
        [--no-dhcp] [--no-serial] [--timeout SECONDS] [--json]
  vmrestore verify --guest ${labGuestNames().join('|')} [--json]   (a lab guest, as it was on VMware)`;

const SCSI: ScsiController[] = ['virtio-scsi', 'lsi', 'pvscsi'];
const NICS: NicModel[] = ['virtio-net-pci', 'vmxnet3', 'e1000', 'e1000e', 'rtl8139'];

function bad(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, `${message}\n\n${VERIFY_USAGE}`);
}

/** The boot request a command line describes; `--guest` takes disks, MAC and network from a lab guest. */
export async function verifyRequestFromArgs(args: string[], log: (s: string) => void): Promise<BootRequest> {
  const { values } = parseArgs({
    args,
    options: {
      firmware: { type: 'string' },
      disk: { type: 'string', multiple: true },
      mac: { type: 'string' },
      'nic-model': { type: 'string' },
      scsi: { type: 'string' },
      subnet: { type: 'string' },
      gateway: { type: 'string' },
      'guest-address': { type: 'string' },
      'no-dhcp': { type: 'boolean' },
      'no-serial': { type: 'boolean' },
      timeout: { type: 'string' },
      guest: { type: 'string' },
      name: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  const timeoutMs = values.timeout === undefined ? undefined : Number(values.timeout) * 1000;
  if (timeoutMs !== undefined && !(timeoutMs > 0)) bad(`--timeout '${values.timeout}' must be a number of seconds`);
  if (values.scsi !== undefined && !SCSI.includes(values.scsi as ScsiController))
    bad(`--scsi '${values.scsi}' must be one of ${SCSI.join(', ')}`);
  if (values['nic-model'] !== undefined && !NICS.includes(values['nic-model'] as NicModel)) {
    bad(`--nic-model '${values['nic-model']}' must be one of ${NICS.join(', ')}`);
  }
  if (values.guest !== undefined) {
    if (!labGuestNames().includes(values.guest)) bad(`--guest '${values.guest}' must be one of ${labGuestNames().join(', ')}`);
    const { ensureGuestImage } = await loadLabGuests();
    const { image, cached } = await ensureGuestImage(values.guest as Parameters<typeof ensureGuestImage>[0], { log });
    log(`${image.name}: ${cached ? 'cached' : 'built'} in ${image.dir}`);
    return {
      name: values.name ?? `${image.name}-as-it-was`,
      firmware: image.firmware,
      disks: [
        { path: image.osDisk, role: 'os' },
        { path: image.dataDisk, role: 'data' },
      ],
      scsiController: (values.scsi as ScsiController | undefined) ?? 'virtio-scsi',
      nic: { model: (values['nic-model'] as NicModel | undefined) ?? 'virtio-net-pci', mac: image.network.mac },
      network: { subnet: image.network.subnet, host: image.network.gateway, guestAddress: image.network.address },
      expect: { dhcp: false, serialConsole: false },
      timeoutMs,
    };
  }
  if (values.firmware !== 'bios' && values.firmware !== 'efi') bad(`--firmware must be bios or efi (got '${values.firmware ?? ''}')`);
  if (!values.disk || values.disk.length === 0) bad('verify needs at least one --disk IMAGE (the boot disk first)');
  if (!values.mac) bad('verify needs --mac, the MAC address the guest expects on its NIC');
  return {
    name: values.name ?? 'verify',
    firmware: values.firmware,
    disks: values.disk.map((p) => ({ path: p, format: /\.vhd$/i.test(p) ? 'vpc' : /\.qcow2$/i.test(p) ? 'qcow2' : 'raw' })),
    scsiController: values.scsi as ScsiController | undefined,
    nic: { model: values['nic-model'] as NicModel | undefined, mac: values.mac },
    network: { subnet: values.subnet, host: values.gateway, guestAddress: values['guest-address'] },
    expect: { dhcp: !values['no-dhcp'], serialConsole: !values['no-serial'] },
    timeoutMs,
  };
}

export function formatReport(r: BootReport): string {
  const secs = (ms: number | undefined) => (ms === undefined ? '      ' : `${(ms / 1000).toFixed(1).padStart(5)}s`);
  const lines = [
    `${r.name}: ${r.verdict.toUpperCase()} (${r.firmware}, ${r.accelerator}; stopped by ${r.stoppedBy} after ${(r.durationMs / 1000).toFixed(1)} s)`,
    ...r.checks.map((c) => `  ${c.status.padEnd(7)} ${secs(c.elapsedMs)} ${c.name}${c.required ? '' : ' (not required)'}: ${c.detail}`),
    r.recoveryTimeMs === undefined
      ? '  recovery time: none (no SSH banner)'
      : `  recovery time (to SSH banner): ${(r.recoveryTimeMs / 1000).toFixed(1)} s`,
    `  logs: ${r.files.workDir}`,
  ];
  if (r.whileUpError) lines.push(`  whileUp: ${r.whileUpError}`);
  if (r.serialTail !== undefined) lines.push('  serial console (last lines):', ...r.serialTail.split('\n').map((l) => `    ${l}`));
  return lines.join('\n');
}

/** `vmrestore verify`: exit 0 when the boot passed, 1 when it failed. */
export async function verifyCommand(args: string[], out: (s: string) => void): Promise<number> {
  const json = args.includes('--json');
  const req = await verifyRequestFromArgs(args, json ? () => {} : out);
  const report = await verifyBoot(req);
  out(json ? JSON.stringify(report, null, 2) : formatReport(report));
  return report.verdict === 'passed' ? 0 : 1;
}
