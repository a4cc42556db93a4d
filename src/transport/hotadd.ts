import { realpathSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { abortableSleep } from '../abort';
import { FailureType, RestoreError } from '../domain/errors';
import type { DiskCheckpoint } from '../domain/vsphere';
import { parseDatastorePath } from '../vsphere';
import { writeToLocalTarget } from './proxy-file';
import type { DiskTransport, DiskWriteJob } from './transport';
import { notConfigured } from './transport';

/**
 * The names udev gives a SCSI disk whose VPD page 0x83 carries an NAA identifier (60-persistent-storage.rules:
 * `wwn-0x<naa>` from ID_WWN_WITH_EXTENSION, `scsi-3<naa>` from scsi_id's ID_SERIAL, 3 = NAA). A vSphere
 * virtual disk with disk.EnableUUID reports its backing UUID as that identifier: '6000C29a-…' is
 * wwn-0x6000c29a… and scsi-36000c29a….
 */
export function deviceNamesForDiskUuid(uuid: string): string[] {
  const naa = uuid.replace(/-/g, '').toLowerCase();
  if (!/^[0-9a-f]{32}$/.test(naa)) {
    throw new RestoreError(FailureType.TransportUnavailable, `hotadd: disk UUID '${uuid}' is not 32 hex digits`);
  }
  return [`wwn-0x${naa}`, `scsi-3${naa}`];
}

/** Size in bytes of a block device (sysfs counts 512-byte sectors) or a file. */
function targetSize(target: string): number {
  const st = statSync(target);
  if (!st.isBlockDevice()) return st.size;
  return Number(readFileSync(`/sys/class/block/${path.basename(target)}/size`, 'utf8').trim()) * 512;
}

/** Waits, as for udev to settle, until one of the disk's by-id names exists; the device it names. */
async function waitForDevice(job: DiskWriteJob, dir: string, uuid: string): Promise<string> {
  const names = deviceNamesForDiskUuid(uuid);
  const waitMs = job.deviceWaitMs ?? 60_000;
  const started = Date.now();
  const beat: DiskCheckpoint = {
    diskIndex: job.disk.diskIndex,
    offset: job.previous?.transport === 'hotadd' ? job.previous.offset : 0,
    bytes: job.previous?.bytes ?? 0,
    transport: 'hotadd',
  };
  let lastBeat = 0;
  for (;;) {
    for (const name of names) {
      try {
        return realpathSync(path.join(dir, name));
      } catch {
        /* not there (yet), or a dangling link */
      }
    }
    if (Date.now() - started >= waitMs) {
      throw new RestoreError(
        FailureType.TransportUnavailable,
        `hotadd: no device for disk UUID ${uuid} (${names.join(' / ')}) appeared in ${dir} on proxy '${job.proxy.name}' within ${Math.round(waitMs / 1000)} s`,
      );
    }
    if (Date.now() - lastBeat >= 1000) {
      job.heartbeat(beat);
      lastBeat = Date.now();
    }
    await abortableSleep(100, job.signal);
  }
}

/**
 * HotAdd: the restored disk is attached to the proxy VM (activity attachToProxy); the proxy finds it as
 * a block device by the disk's backing UUID, as a Linux proxy finds it in /dev/disk/by-id, and writes
 * the device. Nothing else: a disk that is not attached, or whose device does not appear, fails.
 */
export const hotadd: DiskTransport = {
  mode: 'hotadd',
  needs: 'a proxy that is a VM (vmName) and sees the datastore (hotaddDevices)',
  cannot: (proxy, datastore) => {
    const off = notConfigured(proxy, 'hotadd');
    if (off) return off;
    if (!proxy.vmName) return `proxy '${proxy.name}' is not a VM (no vmName), so it cannot hot-add disks`;
    if (!proxy.hotaddDevices?.[datastore]) return `proxy VM '${proxy.vmName}' cannot see datastore '${datastore}'`;
    return undefined;
  },
  async write(job) {
    const { datastore } = parseDatastorePath(job.flatPath);
    const dir = job.proxy.hotaddDevices?.[datastore];
    if (!dir) {
      throw new RestoreError(
        FailureType.TransportUnavailable,
        `hotadd: proxy '${job.proxy.name}' has no device folder for datastore '${datastore}'`,
      );
    }
    const attached = await (await job.proxyVm()).attachedDisk(job.diskFile);
    if (!attached) {
      throw new RestoreError(
        FailureType.TransportUnavailable,
        `hotadd: disk ${job.diskFile} is not attached to proxy VM '${job.proxyVmName}'`,
      );
    }
    if (!attached.uuid) {
      throw new RestoreError(
        FailureType.TransportUnavailable,
        `hotadd: disk ${job.diskFile} on proxy VM '${job.proxyVmName}' has no backing UUID`,
      );
    }
    const device = await waitForDevice(job, dir, attached.uuid);
    const size = targetSize(device);
    if (size < job.disk.capacityBytes) {
      throw new RestoreError(
        FailureType.TransportUnavailable,
        `hotadd: device ${device} of disk UUID ${attached.uuid} has ${size} bytes; the disk needs ${job.disk.capacityBytes}`,
      );
    }
    return writeToLocalTarget(job, 'hotadd', device);
  },
};
