/**
 * Each managed disk's own bytes: a sparse file per disk under the state dir, as a managed disk on Azure is
 * storage of its own (an import copies the blob; later writes to the blob do not reach the disk). Running
 * VMs see their disks as device paths, the way an Azure Linux VM sees them under /dev/disk/azure.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { PageBlobClient } from '@azure/storage-blob';
import type { DiskRec, VmRec } from './state';
import { VHD_FOOTER_SIZE } from './vhd';
import { MiB } from '../../domain/units';

/** Reads of the source blob stay within the 4 MiB Azure serves per page request. */
const COPY_CHUNK = 4 * MiB;
const COPY_CONCURRENCY = 4;
/** Gaps between page ranges shorter than this are read through rather than split into another request. */
const MAX_READ_GAP = 256 * 1024;

export interface ImportStats {
  bytesCopied: number;
  ranges: number;
}

export class DiskStore {
  readonly dir: string;

  /**
   * @param deviceRoot where VMs' device paths go (`<deviceRoot>/<vmName>/scsi1/lun<N>`, `.../root`);
   *   undefined: no device paths.
   */
  constructor(
    stateDir: string,
    readonly deviceRoot?: string,
  ) {
    this.dir = path.join(stateDir, 'disks');
    fs.mkdirSync(this.dir, { recursive: true });
  }

  /** The disk's data (its virtual size, no VHD footer); named by uniqueId, which a re-created disk never reuses. */
  pathOf(d: Pick<DiskRec, 'uniqueId'>): string {
    return path.join(this.dir, `${d.uniqueId}.img`);
  }

  has(d: DiskRec): boolean {
    return fs.existsSync(this.pathOf(d));
  }

  /** An all-zero disk of `diskSizeBytes`, taking no space until written. */
  createEmpty(d: DiskRec): void {
    const fd = fs.openSync(this.pathOf(d), 'w');
    try {
      fs.ftruncateSync(fd, d.diskSizeBytes);
    } finally {
      fs.closeSync(fd);
    }
  }

  /**
   * Copies a VHD page blob's data (not its footer) into the disk, reading only the page ranges that hold
   * data so the copy stays sparse. A failed copy leaves no file behind.
   */
  async importPageBlob(d: DiskRec, blob: PageBlobClient, virtualSize: number): Promise<ImportStats> {
    const file = this.pathOf(d);
    const ranges: Array<{ start: number; end: number }> = [];
    for await (const page of blob.listPageRanges().byPage()) {
      for (const r of page.pageRange ?? []) {
        const end = Math.min(r.end + 1, virtualSize);
        if (r.start < end) ranges.push({ start: r.start, end });
      }
    }
    const reads = coalesce(ranges);
    const fh = await fs.promises.open(file, 'w');
    let bytesCopied = 0;
    try {
      await fh.truncate(d.diskSizeBytes);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < reads.length) {
          const read = reads[next++];
          const count = read.end - read.start;
          const buf = await blob.downloadToBuffer(read.start, count);
          if (buf.length !== count) throw new Error(`short read of ${blob.url} at ${read.start}: ${buf.length} of ${count} bytes`);
          // Only the page ranges are written, so the gaps a read spans stay holes.
          for (const r of read.parts) {
            await fh.write(buf, r.start - read.start, r.end - r.start, r.start);
            bytesCopied += r.end - r.start;
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(COPY_CONCURRENCY, reads.length) }, worker));
    } catch (err) {
      await fh.close();
      fs.rmSync(file, { force: true });
      throw err;
    }
    await fh.close();
    return { bytesCopied, ranges: ranges.length };
  }

  /** A Copy disk starts as the source's bytes (kept sparse), grown to its own size. */
  copy(src: DiskRec, dst: DiskRec): void {
    const to = this.pathOf(dst);
    try {
      execFileSync('cp', ['--sparse=always', this.pathOf(src), to], { stdio: ['ignore', 'ignore', 'pipe'] });
      if (fs.statSync(to).size < dst.diskSizeBytes) fs.truncateSync(to, dst.diskSizeBytes);
    } catch (err) {
      fs.rmSync(to, { force: true });
      throw err;
    }
  }

  /** Disks only grow (CRP refuses to shrink them). */
  resize(d: DiskRec): void {
    const file = this.pathOf(d);
    if (fs.existsSync(file) && fs.statSync(file).size < d.diskSizeBytes) fs.truncateSync(file, d.diskSizeBytes);
  }

  remove(d: Pick<DiskRec, 'uniqueId'>): void {
    fs.rmSync(this.pathOf(d), { force: true });
  }

  /** Footer-less size of the stored data. */
  dataSize(d: DiskRec): number {
    return fs.statSync(this.pathOf(d)).size;
  }

  /**
   * Makes the VM's device paths match what its guest would see: while it runs, `scsi1/lun<N>` for each data
   * disk and `root` for the OS disk, each a symlink to the disk's store; nothing while it is not running.
   */
  syncDevices(vm: VmRec, disks: Record<string, DiskRec>): void {
    if (!this.deviceRoot) return;
    const vmDir = path.join(this.deviceRoot, vm.name);
    const want = new Map<string, string>();
    if (vm.powerState === 'running') {
      const os = disks[vm.osDisk.diskId];
      if (os) want.set('root', this.pathOf(os));
      for (const ref of vm.dataDisks) {
        const d = disks[ref.diskId];
        if (d && ref.lun !== undefined) want.set(path.join('scsi1', `lun${ref.lun}`), this.pathOf(d));
      }
    }
    if (want.size === 0) {
      fs.rmSync(vmDir, { recursive: true, force: true });
      return;
    }
    const scsi = path.join(vmDir, 'scsi1');
    fs.mkdirSync(scsi, { recursive: true });
    const have = ['root', ...fs.readdirSync(scsi).map((n) => path.join('scsi1', n))];
    for (const rel of have) {
      const link = path.join(vmDir, rel);
      const target = readlinkOrUndefined(link);
      if (target !== undefined && want.get(rel) !== target) fs.rmSync(link, { force: true });
    }
    for (const [rel, target] of want) {
      const link = path.join(vmDir, rel);
      if (readlinkOrUndefined(link) !== target) {
        fs.rmSync(link, { force: true });
        fs.symlinkSync(target, link);
      }
    }
  }

  removeDevices(vmName: string): void {
    if (this.deviceRoot) fs.rmSync(path.join(this.deviceRoot, vmName), { recursive: true, force: true });
  }
}

/**
 * Groups page ranges into reads of at most COPY_CHUNK that skip only gaps of MAX_READ_GAP or more: a blob
 * uploaded without its zero sectors has many small ranges, and one read per range would be thousands.
 */
function coalesce(ranges: Array<{ start: number; end: number }>): Array<{ start: number; end: number; parts: typeof ranges }> {
  const reads: Array<{ start: number; end: number; parts: typeof ranges }> = [];
  for (const r of [...ranges].sort((a, b) => a.start - b.start)) {
    for (let off = r.start; off < r.end; ) {
      const last = reads[reads.length - 1];
      if (last && off - last.end < MAX_READ_GAP && off + 1 - last.start <= COPY_CHUNK) {
        const end = Math.min(r.end, last.start + COPY_CHUNK);
        last.parts.push({ start: off, end });
        last.end = end;
        off = end;
      } else {
        const end = Math.min(r.end, off + COPY_CHUNK);
        reads.push({ start: off, end, parts: [{ start: off, end }] });
        off = end;
      }
    }
  }
  return reads;
}

function readlinkOrUndefined(link: string): string | undefined {
  try {
    return fs.readlinkSync(link);
  } catch {
    return undefined;
  }
}

/** Byte size a disk is served with through its SAS: the data plus a fixed-VHD footer, as Azure exports it. */
export function exportedSize(d: Pick<DiskRec, 'diskSizeBytes'>): number {
  return d.diskSizeBytes + VHD_FOOTER_SIZE;
}
