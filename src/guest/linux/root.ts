import { FailureType, RestoreError } from '../../domain/errors';
import { Ext4Volume, type Ext4Stat } from './ext4';
import { NoPartitionTableError, probeFilesystem, readPartitionTable, type PartitionTable } from '../disk/partition';
import type { DataDiskFilesystems, LinuxRoot } from './types';

// Finding the root filesystem and the data disks' filesystems.

/** Reads the partition table and filesystem UUIDs of the VM's data disks (paths in disk order). */
export async function dataDiskFilesystems(paths: string[]): Promise<DataDiskFilesystems[]> {
  const out: DataDiskFilesystems[] = [];
  for (const [i, p] of paths.entries()) {
    let table: PartitionTable | null = null;
    try {
      table = await readPartitionTable(p);
    } catch (e) {
      if (!(e instanceof NoPartitionTableError)) throw e;
    }
    const parts = table ? table.partitions.map((x) => ({ partition: x.index, offset: x.startBytes })) : [{ partition: 0, offset: 0 }];
    const filesystems: DataDiskFilesystems['filesystems'] = [];
    for (const part of parts) {
      const fs = await probeFilesystem(p, part.offset);
      if (fs && /^[0-9A-Fa-f-]+$/.test(fs.uuid)) filesystems.push({ partition: part.partition, type: fs.type, uuid: fs.uuid });
    }
    out.push({ diskIndex: i + 1, filesystems });
  }
  return out;
}

export async function findLinuxRoot(imagePath: string, opts: { rootPartitionIndex?: number } = {}): Promise<LinuxRoot> {
  let table: PartitionTable | null = null;
  try {
    table = await readPartitionTable(imagePath);
  } catch (e) {
    if (!(e instanceof NoPartitionTableError)) throw e;
  }
  const candidates: { index: number | null; offset: number; typeCode?: string }[] = table
    ? table.partitions
        .filter((p) => opts.rootPartitionIndex === undefined || p.index === opts.rootPartitionIndex)
        // Linux-typed partitions first; others are still probed since type codes are often generic.
        .sort((a, b) => Number(b.type === 'linux') - Number(a.type === 'linux') || a.index - b.index)
        .map((p) => ({ index: p.index, offset: p.startBytes, typeCode: p.typeCode }))
    : [{ index: null, offset: 0 }];
  if (table && opts.rootPartitionIndex !== undefined && candidates.length === 0) {
    throw new RestoreError(FailureType.GuestPreparation, `${imagePath} has no partition ${opts.rootPartitionIndex}`);
  }
  const seen: string[] = [];
  for (const c of candidates) {
    const fs = await probeFilesystem(imagePath, c.offset);
    const label = c.index === null ? 'whole disk' : `partition ${c.index}`;
    if (!fs || !fs.type.startsWith('ext')) {
      const lvm = c.typeCode === '8e' || c.typeCode === 'E6D6D379-F507-44C2-A23C-238F2A3DF928';
      seen.push(`${label}: ${fs ? fs.type : lvm ? 'LVM' : 'unknown'}`);
      continue;
    }
    let st: Ext4Stat | null;
    try {
      st = await new Ext4Volume(imagePath, c.offset).stat('/etc/fstab');
    } catch (e) {
      // A damaged filesystem rules this candidate out; another partition may still be the root.
      if (!(e instanceof RestoreError)) throw e;
      seen.push(`${label}: ${fs.type} that cannot be opened (${e.message.slice(0, 200)})`);
      continue;
    }
    if (st) return { partitionIndex: c.index, partitionOffset: c.offset, filesystem: fs, table };
    seen.push(`${label}: ${fs.type} without /etc/fstab`);
  }
  throw new RestoreError(
    FailureType.GuestPreparation,
    `no ext2/3/4 root filesystem (one holding /etc/fstab) found in ${imagePath}` +
      (seen.length ? ` (${seen.join('; ')})` : '') +
      '; XFS, Btrfs and LVM roots are not supported by offline preparation',
  );
}

/** Reads a file of the ext4 filesystem at partitionOffset, following symlinks; null if missing. */
export async function readGuestFile(imagePath: string, partitionOffset: number, guestPath: string): Promise<string | null> {
  return new Ext4Volume(imagePath, partitionOffset).readText(guestPath);
}
