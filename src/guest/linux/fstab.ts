import { probeFilesystem } from '../disk/partition';
import { Plan } from './plan';
import type { DataDiskFilesystems, LinuxRoot } from './types';

// fstab that survives Azure's disk names.

const BUS_DEVICE = /^\/dev\/(sd|hd|vd|xvd)([a-z]+)(\d*)$/;

/** 0 for `a`, 25 for `z`, 26 for `aa`: the disk's position behind a bus device name (sdb → 1). */
function diskNumber(letters: string): number {
  return [...letters].reduce((n, c) => n * 26 + (c.charCodeAt(0) - 96), 0) - 1;
}

export async function fixFstab(
  plan: Plan,
  root: LinuxRoot,
  imagePath: string,
  known: Set<string> | null,
  dataDisks: DataDiskFilesystems[] | undefined,
): Promise<void> {
  const ref = await plan.file('/etc/fstab');
  if (!ref) return;
  const lines = ref.text.split('\n');
  const fields = (l: string) => l.trim().split(/\s+/);
  const isEntry = (l: string) => l.trim() !== '' && !l.trim().startsWith('#') && fields(l).length >= 2;
  const rootLine = lines.find((l) => isEntry(l) && fields(l)[1] === '/');
  const rootDisk = rootLine ? BUS_DEVICE.exec(fields(rootLine)[0]) : null;
  const osDisk = rootDisk ? `${rootDisk[1]}${rootDisk[2]}` : 'sda';
  const osBus = rootDisk ? rootDisk[1] : 'sd';
  const osNumber = diskNumber(rootDisk ? rootDisk[2] : 'a');

  const uuidCache = new Map<number, string | null>();
  const partitionUuid = async (n: number): Promise<string | null> => {
    if (!uuidCache.has(n)) {
      const part = root.table?.partitions.find((p) => p.index === n);
      const fs = part ? await probeFilesystem(imagePath, part.startBytes) : null;
      uuidCache.set(n, fs && /^[0-9a-fA-F-]+$/.test(fs.uuid) ? fs.uuid : null);
    }
    return uuidCache.get(n)!;
  };

  const notes: string[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (!isEntry(line)) continue;
    const f = fields(line);
    const [device, mountPoint, type = '', options = 'defaults'] = f;
    const opts = options.split(',');
    if (/^(nfs4?|cifs|smbfs|smb3|glusterfs|ceph|sshfs|fuse\..*|9p|tmpfs|proc|sysfs|devpts)$/.test(type)) continue;
    if (opts.includes('bind') || opts.includes('noauto')) continue;

    let newDevice = device;
    let dataDisk = false;
    const bus = BUS_DEVICE.exec(device);
    if (mountPoint === '/') {
      if (bus || device.startsWith('/dev/disk/by-')) newDevice = `UUID=${root.filesystem.uuid}`;
    } else if (bus && `${bus[1]}${bus[2]}` === osDisk && bus[3]) {
      const uuid = await partitionUuid(Number(bus[3]));
      if (uuid) newDevice = `UUID=${uuid}`;
    } else if (bus && bus[1] === osBus && dataDisks) {
      // On VMware the disks sit on the bus in the VM's order: sdb is data disk 1. On Azure sdb is the
      // temporary resource disk, so the entry must name the filesystem, not the device.
      const disk = dataDisks.find((d) => d.diskIndex === diskNumber(bus[2]) - osNumber);
      const fs = disk?.filesystems.find((x) => x.partition === (bus[3] ? Number(bus[3]) : 0));
      if (fs) {
        newDevice = `UUID=${fs.uuid}`;
        dataDisk = true;
      }
    }
    const converted = newDevice !== device;
    let missing = false;
    if (mountPoint !== '/' && !converted) {
      if (bus || device.startsWith('/dev/disk/by-path/') || device.startsWith('/dev/disk/by-id/')) missing = true;
      const uuid = /^UUID=["']?([^"']+)["']?$/.exec(device);
      if (uuid && known && !known.has(uuid[1].toLowerCase())) missing = true;
    }
    // A data disk that is late or missing must not stop the boot (Azure attaches data disks separately).
    const addNofail = (missing || dataDisk) && !opts.includes('nofail');
    if (!converted && !addNofail) continue;

    // Replace fields in place so the file keeps its column alignment and comments.
    let out = line;
    if (converted) {
      out = out.replace(device, newDevice);
      notes.push(`${device} → ${newDevice}`);
    }
    if (addNofail) {
      if (f.length >= 4) {
        out = out.replace(
          new RegExp(`(\\s${escapeRe(mountPoint)}\\s+${escapeRe(type)}\\s+)${escapeRe(options)}(?=\\s|$)`),
          `$1${options},nofail`,
        );
      } else {
        out = `${out.trimEnd()}${f.length === 3 ? '' : ' auto'} defaults,nofail`;
      }
      notes.push(`nofail on ${mountPoint}`);
    }
    lines[i] = out;
  }
  if (!notes.length) return;
  plan.edit(ref, lines.join('\n'), `fstab for Azure's disk layout (/dev/sdb is the temporary disk there): ${notes.join(', ')}`);
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
