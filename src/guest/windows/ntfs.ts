/**
 * NTFS access for guest preparation through the ntfs-3g tools. The tools want a partition, not a
 * whole disk, so a partition is copied out of the disk image into a sparse working file, edited there,
 * and only the 4 KiB blocks that changed are written back into the disk image.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FailureType, RestoreError } from '../../domain/errors';
import { run, toolEnv } from '../exec';

const CHUNK = 1024 * 1024;
const GRAIN = 4096;
const ZERO = Buffer.alloc(CHUNK);

export interface PartitionCopyStats {
  /** Bytes read from the source range (holes included). */
  bytesScanned: number;
  /** Bytes written (non-zero data). */
  bytesWritten: number;
}

/** A partition copied out of a disk image, remembering what it held so write-back can skip unchanged data. */
export class PartitionCopy {
  private constructor(
    readonly diskImage: string,
    readonly startBytes: number,
    readonly sizeBytes: number,
    readonly partPath: string,
    /** Chunk index → SHA-1 of the chunk as extracted; absent chunks were all zeros. */
    private readonly hashes: Map<number, Buffer>,
    readonly extractStats: PartitionCopyStats,
  ) {}

  /** Copies disk[start, start+size) into a new sparse file at partPath. */
  static async extract(diskImage: string, startBytes: number, sizeBytes: number, partPath: string): Promise<PartitionCopy> {
    const src = await fsp.open(diskImage, 'r');
    const dst = await fsp.open(partPath, 'w');
    const hashes = new Map<number, Buffer>();
    let bytesWritten = 0;
    try {
      await dst.truncate(sizeBytes);
      const buf = Buffer.alloc(CHUNK);
      for (let off = 0, i = 0; off < sizeBytes; off += CHUNK, i++) {
        const want = Math.min(CHUNK, sizeBytes - off);
        const { bytesRead } = await src.read(buf, 0, want, startBytes + off);
        if (bytesRead < want) buf.fill(0, bytesRead, want);
        const chunk = buf.subarray(0, want);
        if (chunk.equals(ZERO.subarray(0, want))) continue;
        hashes.set(i, sha1(chunk));
        await writeNonZeroGrains(dst, chunk, off);
        bytesWritten += want;
      }
    } finally {
      await src.close();
      await dst.close();
    }
    return new PartitionCopy(diskImage, startBytes, sizeBytes, partPath, hashes, {
      bytesScanned: sizeBytes,
      bytesWritten,
    });
  }

  /**
   * Writes the 4 KiB blocks of the working copy that differ from the disk image back into it.
   * Returns how many bytes were written.
   */
  async writeBack(): Promise<number> {
    const part = await fsp.open(this.partPath, 'r');
    const disk = await fsp.open(this.diskImage, 'r+');
    let written = 0;
    try {
      const buf = Buffer.alloc(CHUNK);
      const orig = Buffer.alloc(CHUNK);
      for (let off = 0, i = 0; off < this.sizeBytes; off += CHUNK, i++) {
        const want = Math.min(CHUNK, this.sizeBytes - off);
        const { bytesRead } = await part.read(buf, 0, want, off);
        if (bytesRead < want) buf.fill(0, bytesRead, want);
        const chunk = buf.subarray(0, want);
        const before = this.hashes.get(i);
        const isZero = chunk.equals(ZERO.subarray(0, want));
        if (isZero && !before) continue;
        const now = isZero ? undefined : sha1(chunk);
        if (before && now && before.equals(now)) continue;
        const o = await disk.read(orig, 0, want, this.startBytes + off);
        if (o.bytesRead < want) orig.fill(0, o.bytesRead, want);
        for (let g = 0; g < want; g += GRAIN) {
          const end = Math.min(g + GRAIN, want);
          if (chunk.subarray(g, end).equals(orig.subarray(g, end))) continue;
          await disk.write(chunk, g, end - g, this.startBytes + off + g);
          written += end - g;
        }
        if (now) this.hashes.set(i, now);
        else this.hashes.delete(i);
      }
    } finally {
      await part.close();
      await disk.close();
    }
    return written;
  }
}

function sha1(b: Buffer): Buffer {
  return createHash('sha1').update(b).digest();
}

async function writeNonZeroGrains(fh: fsp.FileHandle, chunk: Buffer, at: number): Promise<void> {
  let g = 0;
  while (g < chunk.length) {
    const zeroAt = (p: number) => {
      const end = Math.min(p + GRAIN, chunk.length);
      return chunk.subarray(p, end).equals(ZERO.subarray(0, end - p));
    };
    if (zeroAt(g)) {
      g += GRAIN;
      continue;
    }
    const start = g;
    while (g < chunk.length && !zeroAt(g)) g += GRAIN;
    const end = Math.min(g, chunk.length);
    await fh.write(chunk, start, end - start, at + start);
  }
}

/** Copies a whole partition image into a disk image at offset, writing only non-zero 4 KiB blocks. */
export async function embedPartition(diskImage: string, offset: number, partPath: string): Promise<number> {
  const src = await fsp.open(partPath, 'r');
  const dst = await fsp.open(diskImage, 'r+');
  let written = 0;
  try {
    const { size } = await src.stat();
    const buf = Buffer.alloc(CHUNK);
    for (let off = 0; off < size; off += CHUNK) {
      const want = Math.min(CHUNK, size - off);
      const { bytesRead } = await src.read(buf, 0, want, off);
      const chunk = buf.subarray(0, bytesRead);
      if (chunk.equals(ZERO.subarray(0, bytesRead))) continue;
      await writeNonZeroGrains(dst, chunk, offset + off);
      written += bytesRead;
    }
  } finally {
    await src.close();
    await dst.close();
  }
  return written;
}

/** True when the 512-byte boot sector at offset carries the NTFS OEM id. */
export async function hasNtfsBootSector(image: string, offset: number): Promise<boolean> {
  const fh = await fsp.open(image, 'r');
  try {
    const b = Buffer.alloc(512);
    const { bytesRead } = await fh.read(b, 0, 512, offset);
    return bytesRead === 512 && b.toString('latin1', 3, 11) === 'NTFS    ' && b.readUInt16LE(510) === 0xaa55;
  } finally {
    await fh.close();
  }
}

/**
 * The path argument for the ntfs-3g tools: always absolute (so never read as an option) and free of
 * control characters (the tools print names line by line).
 */
function ntfsPath(path: string): string {
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(path) || path.length > 4000) {
    throw new RestoreError(
      FailureType.GuestPreparation,
      `NTFS path ${JSON.stringify(path.slice(0, 120))} cannot be handled safely; refused`,
    );
  }
  return (
    '/' +
    path
      .split(/[\\/]+/)
      .filter(Boolean)
      .join('/')
  );
}

/** Files read from a guest volume (hives, the staged installer) larger than this are refused. */
export const MAX_NTFS_READ_BYTES = 512 * 1024 * 1024;

/**
 * A file's contents from an NTFS partition image, or null when it does not exist. ntfscat writes to a
 * file beside the partition image (not into memory), and more than maxBytes is refused.
 */
export async function ntfsReadFile(partPath: string, path: string, maxBytes = MAX_NTFS_READ_BYTES): Promise<Buffer | null> {
  const out = `${partPath}.read-${process.pid}-${Date.now()}`;
  try {
    const r = await run('ntfscat', [partPath, ntfsPath(path)], {
      allowExit: [1],
      timeoutMs: 300_000,
      stdoutFile: out,
      maxStdoutBytes: maxBytes,
    });
    if (r.code === 0) return await fsp.readFile(out);
    if (/No such file|not found|Couldn't open|Failed to open/i.test(r.stderr)) return null;
    throw new RestoreError(FailureType.GuestPreparation, `ntfscat ${path} failed: ${r.stderr.trim().slice(0, 500)}`);
  } finally {
    await fsp.rm(out, { force: true });
  }
}

/** Writes a local file into an existing directory of an NTFS partition image (created or overwritten). */
export async function ntfsWriteFile(partPath: string, localFile: string, path: string): Promise<void> {
  await run('ntfscp', ['-f', partPath, localFile, ntfsPath(path)], { timeoutMs: 300_000 });
}

/** Names in a directory of an NTFS partition image, or null when the directory does not exist. */
export async function ntfsListDir(partPath: string, dir: string): Promise<string[] | null> {
  const r = await run('ntfsls', ['-p', ntfsPath(dir), partPath], { allowExit: [1], timeoutMs: 120_000 });
  if (r.code !== 0) return null;
  return r.stdout.split('\n').filter((l) => l !== '' && l !== '.' && l !== '..');
}

/** `ntfsfix -n`: checks the volume without changing it. */
export async function ntfsCheck(partPath: string): Promise<{ ok: boolean; output: string }> {
  const r = await run('ntfsfix', ['-n', partPath], { allowExit: [1], timeoutMs: 120_000 });
  return { ok: r.code === 0 && /processed successfully/i.test(r.stdout), output: (r.stdout + r.stderr).trim() };
}

async function isMounted(dir: string): Promise<boolean> {
  const info = await fsp.readFile('/proc/self/mountinfo', 'utf8');
  const escaped = dir.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
  return info.split('\n').some((l) => l.split(' ')[4] === escaped);
}

/**
 * Mounts an NTFS partition image read-write with ntfs-3g (FUSE) for fn, then unmounts. ntfs-3g runs in
 * the foreground (no_detach) so that its exit, awaited here, proves every write reached the image:
 * a detached daemon can still be flushing after umount returns.
 */
export async function withNtfsMount<T>(partPath: string, workDir: string, fn: (root: string) => Promise<T>): Promise<T> {
  const mnt = await fsp.mkdtemp(join(workDir, 'mnt-'));
  const child = spawn('ntfs-3g', ['-o', 'no_detach', partPath, mnt], { env: toolEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => {
    child.on('error', () => resolve(-1));
    child.on('close', (code) => resolve(code));
  });
  let exitCode: number | null | undefined;
  void exited.then((c) => (exitCode = c));
  try {
    const deadline = Date.now() + 15_000;
    while (!(await isMounted(mnt))) {
      if (exitCode !== undefined || Date.now() > deadline) {
        if (exitCode === undefined) child.kill('SIGKILL');
        throw new RestoreError(
          FailureType.GuestPreparation,
          `ntfs-3g could not mount ${partPath} (FUSE needs /dev/fuse, and root or a setuid-root ntfs-3g): ${stderr.trim() || 'timed out'}`,
        );
      }
      await sleep(20);
    }
    let result: T;
    try {
      result = await fn(mnt);
    } finally {
      await unmount(mnt);
    }
    const code = await exited;
    if (code !== 0) {
      throw new RestoreError(FailureType.GuestPreparation, `ntfs-3g exited with ${code} after unmounting: ${stderr.trim()}`);
    }
    return result;
  } finally {
    await fsp.rmdir(mnt).catch(() => undefined);
  }
}

async function unmount(mnt: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await run('umount', [mnt], { timeoutMs: 60_000 });
      return;
    } catch (e) {
      if (attempt >= 20) throw e;
      // EBUSY right after the last file closes is transient.
      await sleep(100);
    }
  }
}

/**
 * The stored spelling of a path in an NTFS partition image, matching each component
 * case-insensitively the way Windows does (the ntfs-3g tools look names up case-sensitively),
 * or null when some component is missing.
 */
export async function ntfsResolvePath(partPath: string, path: string): Promise<string | null> {
  let at = '';
  for (const part of path.split(/[\\/]+/).filter(Boolean)) {
    const names = await ntfsListDir(partPath, at || '/');
    const hit = names?.find((n) => n === part) ?? names?.find((n) => n.toUpperCase() === part.toUpperCase());
    if (!hit) return null;
    at = `${at}/${hit}`;
  }
  return at || '/';
}
