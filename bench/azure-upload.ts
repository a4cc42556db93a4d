/**
 * Benchmark of the fixed-VHD page-blob upload against a local Azurite, compared with AzCopy uploading
 * the same VHD to the same Azurite in the same run (or, when AzCopy cannot be built or run, with a
 * plain sequential Put Page loop that sends every 4 MiB including zeros).
 *
 *   node --import tsx bench/azure-upload.ts [--size-gib N] [--concurrency N] [--checksum md5|none]
 *                                          [--checksum-workers N] [--repeats N] [--no-azcopy] [--with-sequential] [--keep]
 *
 * AzCopy is built from its Go module into a cache outside the repository
 * (${XDG_CACHE_HOME:-~/.cache}/vmrestore/bin/azcopy-<version>/azcopy); VMRESTORE_AZCOPY=<path> uses a
 * given binary instead, VMRESTORE_AZCOPY_VERSION picks another version.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { ContainerSASPermissions, type ContainerClient, type PageBlobClient } from '@azure/storage-blob';
import { buildFixedVhdFooter, uuidFromRestoreId, vhdVirtualSize } from '../src/azure/vhd';
import { uploadFixedVhd, verifyUploadedVhd, type PageChecksum, type UploadBlock } from '../src/azure/pageblob';
import { startEphemeralAzurite } from '../src/azure/pageblob-azurite';
import { cacheDir } from '../src/cache-dir';
import { MiB, GiB } from '../src/domain/units';

/**
 * Newest AzCopy the Go module proxy reachable here serves: every later tag tried (v10.24.0 to v10.31.0)
 * answers 403 "This module version is not available". `go install …@version` fails even for served
 * versions, because it also reads the module's version list (for deprecation notices), which the proxy
 * refuses; so we build inside a throwaway module that requires the version instead.
 */
export const DEFAULT_AZCOPY_VERSION = 'v10.23.0';

export interface AzureUploadBenchOptions {
  /** Image size; 2 GiB by default. */
  sizeBytes?: number;
  /** Share of the image holding random data, in runs of about 4 MiB; 0.25 by default. */
  dataFraction?: number;
  /** Size of the blocks fed to the uploader; 1 MiB by default. */
  blockSize?: number;
  concurrency?: number;
  checksum?: PageChecksum;
  /** MD5 worker threads (the uploader's default when unset; 0 hashes on the main thread). */
  checksumWorkers?: number;
  /** Try AzCopy as the baseline (default true). */
  azcopy?: boolean;
  azcopyVersion?: string;
  /** Timed runs of ours and of AzCopy, alternating; medians are reported (default 3). */
  repeats?: number;
  /** Also time the sequential loop when AzCopy ran. */
  withSequential?: boolean;
  /** Folder for the image and Azurite's data; a temporary one by default. */
  workDir?: string;
  keep?: boolean;
  log?: (line: string) => void;
}

export interface UploadFigures {
  seconds: number;
  /** VHD virtual size divided by the wall time. */
  virtualMiBps: number;
  bytesSent: number;
  /** Bytes sent divided by the wall time. */
  sentMiBps: number;
  pageWrites?: number;
  /** Wall times of every repeat, when there were several. */
  samples?: number[];
  /** CPU seconds (user + system) of the uploading process and of Azurite during the upload, when known. */
  clientCpuSeconds?: number;
  azuriteCpuSeconds?: number;
}

/** CPU seconds of a process from /proc (Linux): its own, and its reaped children's. */
function procCpuSeconds(pid: number | 'self'): { own: number; children: number } | undefined {
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    // utime stime cutime cstime, in clock ticks (100 per second on Linux).
    return { own: (Number(f[11]) + Number(f[12])) / 100, children: (Number(f[13]) + Number(f[14])) / 100 };
  } catch {
    return undefined;
  }
}

export interface AzureUploadBenchResult {
  image: { capacityBytes: number; virtualSize: number; dataBytes: number; dataFraction: number; runs: number };
  ours: UploadFigures & {
    concurrency: number;
    checksum: PageChecksum;
    zeroBytesSkipped: number;
    verifyOk: boolean;
    problems: string[];
  };
  azcopy: {
    ran: boolean;
    version?: string;
    binary?: string;
    /** Why AzCopy was not used, when it was not. */
    reason?: string;
    figures?: UploadFigures;
    /**
     * Median time until AzCopy's last write landed. AzCopy reports completion on a 2-second tick, so
     * this is its transfer time without that rounding.
     */
    transferSeconds?: number;
    transferVirtualMiBps?: number;
    footerOk?: boolean;
  };
  sequential?: UploadFigures;
  baseline: 'azcopy' | 'sequential';
  /** Our virtual MiB/s divided by the baseline's, both by wall time. */
  ratio: number;
  /** Against AzCopy's transfer time (its last write) instead of its wall time. */
  ratioToTransfer?: number;
  /**
   * The same two ratios for each repeat (ours and AzCopy's runs of it follow each other, so load from the
   * rest of the machine hits both about alike), and their medians: steadier than the ratio of medians on a
   * machine whose load swings between repeats.
   */
  pairRatios?: number[];
  pairRatiosToTransfer?: number[];
  medianPairRatio?: number;
  medianPairRatioToTransfer?: number;
  /** Median CPU seconds, client + Azurite, of ours and of AzCopy's uploads, and their ratio (AzCopy's / ours). */
  cpu?: { ours: number; azcopy: number; ratio: number };
}

function medianOf(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function run(
  cmd: string,
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd: opts.cwd, env: opts.env, timeout: opts.timeoutMs, maxBuffer: 64 * MiB }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) + (err && code === -1 ? String(err) : '') });
    });
  });
}

/** A working AzCopy binary, building it with Go if needed, or the reason there is none. */
export async function ensureAzcopy(
  version: string,
  log: (s: string) => void,
): Promise<{ binary: string; version: string } | { reason: string }> {
  const explicit = process.env.VMRESTORE_AZCOPY;
  if (explicit) {
    const v = await run(explicit, ['--version']);
    return v.code === 0
      ? { binary: explicit, version: v.stdout.trim() }
      : { reason: `VMRESTORE_AZCOPY=${explicit} does not run: ${v.stderr.trim()}` };
  }
  const binDir = cacheDir('bin', `azcopy-${version}`);
  const binary = path.join(binDir, 'azcopy');
  if (!existsSync(binary)) {
    const go = await run('go', ['version']);
    if (go.code !== 0) return { reason: 'Go is not installed, so AzCopy cannot be built' };
    const srcDir = cacheDir('src', `azcopy-${version}`);
    mkdirSync(srcDir, { recursive: true });
    mkdirSync(binDir, { recursive: true });
    writeFileSync(
      path.join(srcDir, 'go.mod'),
      `module azcopybuild\n\ngo 1.19\n\nrequire github.com/Azure/azure-storage-azcopy/v10 ${version}\n`,
    );
    rmSync(path.join(srcDir, 'go.sum'), { force: true });
    log(`building AzCopy ${version} with ${go.stdout.trim()} (first run only; about a minute)`);
    const b = await run('go', ['build', '-mod=mod', '-o', binary, 'github.com/Azure/azure-storage-azcopy/v10'], {
      cwd: srcDir,
      timeoutMs: 15 * 60 * 1000,
    });
    if (b.code !== 0 || !existsSync(binary)) {
      const why = b.stderr
        .split('\n')
        .filter((l) => l && !l.startsWith('go: downloading'))
        .slice(-5)
        .join(' | ');
      return { reason: `AzCopy ${version} did not build: ${why}` };
    }
  }
  const v = await run(binary, ['--version']);
  if (v.code !== 0) return { reason: `${binary} does not run: ${v.stderr.trim()}` };
  return { binary, version: v.stdout.trim() };
}

/** Small deterministic PRNG so every run lays the data out the same way. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface ImageLayout {
  runs: { offset: number; length: number }[];
  dataBytes: number;
}

/**
 * Writes a sparse raw image with random runs of 3–5 MiB (4 KiB aligned, so they rarely line up with
 * the 1 MiB input blocks) scattered at the requested density, then appends a VHD footer so AzCopy can
 * upload the very same file.
 */
async function createImage(file: string, capacity: number, dataFraction: number, restoreId: string): Promise<ImageLayout> {
  const rnd = mulberry32(0x5eed);
  const slot = Math.max(4 * MiB, Math.round((4 * MiB) / dataFraction / (64 * 1024)) * 64 * 1024);
  const runs: { offset: number; length: number }[] = [];
  const fh = await open(file, 'w');
  try {
    await fh.truncate(capacity);
    for (let base = 0; base < capacity; base += slot) {
      const room = Math.min(slot, capacity - base);
      let length = Math.round((3 * MiB + rnd() * 2 * MiB) / 4096) * 4096;
      length = Math.min(length, room);
      const offset = base + Math.floor((rnd() * (room - length)) / 4096) * 4096;
      if (length <= 0) continue;
      const data = randomBytes(length);
      for (let s = 0; s < length; s += 512) data[s] = data[s] || 1;
      await fh.write(data, 0, length, offset);
      runs.push({ offset, length });
    }
    const virtualSize = vhdVirtualSize(capacity);
    const footer = buildFixedVhdFooter({ currentSize: virtualSize, uuid: uuidFromRestoreId(restoreId) });
    await fh.write(footer, 0, footer.length, virtualSize);
    // Flush now so write-back of the image does not compete with the timed uploads.
    await fh.sync();
  } finally {
    await fh.close();
  }
  return { runs, dataBytes: runs.reduce((a, r) => a + r.length, 0) };
}

/**
 * Reads the image as blocks, zero blocks as null, keeping `readAhead` reads in flight the way a
 * repository reader would. Buffers that turned out to be zero are recycled; a data buffer is never
 * reused, since the uploader keeps views of it until its write completes.
 */
export async function* fileBlocks(fh: FileHandle, capacity: number, blockSize: number, readAhead = 8): AsyncGenerator<UploadBlock> {
  const zero = Buffer.alloc(blockSize);
  const spare: Buffer[] = [];
  const readBlock = async (offset: number): Promise<UploadBlock> => {
    const length = Math.min(blockSize, capacity - offset);
    const buf = length === blockSize ? (spare.pop() ?? Buffer.allocUnsafe(length)) : Buffer.allocUnsafe(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    if (bytesRead !== length) throw new Error(`short read at ${offset}: ${bytesRead} of ${length}`);
    if (buf.equals(zero.subarray(0, length))) {
      if (length === blockSize) spare.push(buf);
      return { offset, length, data: null };
    }
    return { offset, length, data: buf };
  };
  const queue: Promise<UploadBlock>[] = [];
  let next = 0;
  const fill = (): void => {
    while (queue.length < readAhead && next < capacity) {
      const p = readBlock(next);
      p.catch(() => undefined);
      queue.push(p);
      next += blockSize;
    }
  };
  fill();
  while (queue.length > 0) {
    const block = await queue.shift()!;
    fill();
    yield block;
  }
}

async function sumPageRanges(blob: PageBlobClient): Promise<number> {
  let total = 0;
  for await (const r of blob.listPageRanges()) total += r.end - r.start + 1;
  return total;
}

function figures(seconds: number, virtualSize: number, bytesSent: number, pageWrites?: number): UploadFigures {
  return {
    seconds,
    virtualMiBps: virtualSize / MiB / seconds,
    bytesSent,
    sentMiBps: bytesSent / MiB / seconds,
    pageWrites,
  };
}

function cpuText(f: UploadFigures): string {
  const t = (x: number | undefined) => (x === undefined ? '?' : `${x.toFixed(1)} s`);
  return `client ${t(f.clientCpuSeconds)}, Azurite ${t(f.azuriteCpuSeconds)}`;
}

/** The run with the median wall time. */
function median<T extends { seconds: number }>(runs: T[]): T {
  const sorted = [...runs].sort((a, b) => a.seconds - b.seconds);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

/** The naive uploader: every 4 MiB of the VHD, zeros included, one Put Page at a time. */
async function sequentialUpload(
  blob: PageBlobClient,
  fh: FileHandle,
  vhdSize: number,
  checksum: PageChecksum,
): Promise<{ bytesSent: number; pageWrites: number }> {
  const { createHash } = await import('node:crypto');
  await blob.create(vhdSize);
  let pageWrites = 0;
  for (let off = 0; off < vhdSize; off += 4 * MiB) {
    const len = Math.min(4 * MiB, vhdSize - off);
    const buf = Buffer.allocUnsafe(len);
    await fh.read(buf, 0, len, off);
    const md5 = checksum === 'md5' ? createHash('md5').update(buf).digest() : undefined;
    await blob.uploadPages(buf, off, len, { transactionalContentMD5: md5 });
    pageWrites++;
  }
  return { bytesSent: vhdSize, pageWrites };
}

async function runAzcopy(
  binary: string,
  file: string,
  container: ContainerClient,
  blobName: string,
  workDir: string,
): Promise<{ seconds: number; transferSeconds: number } | { reason: string }> {
  const sas = await container.generateSasUrl({
    permissions: ContainerSASPermissions.parse('racwdl'),
    expiresOn: new Date(Date.now() + 3600 * 1000),
  });
  const q = sas.indexOf('?');
  const url = `${sas.slice(0, q)}/${blobName}${sas.slice(q)}`;
  const env = {
    ...process.env,
    AZCOPY_LOG_LOCATION: path.join(workDir, 'azcopy-logs'),
    AZCOPY_JOB_PLAN_LOCATION: path.join(workDir, 'azcopy-plans'),
  };
  // AzCopy notices the end of its job only on a 2-second progress tick, so its wall time is rounded
  // up to that tick. Watching the blob's ETag tells when its last write actually landed.
  const blob = container.getBlobClient(blobName);
  let lastChange = 0;
  let lastEtag: string | undefined;
  let running = true;
  const t0 = performance.now();
  const watcher = (async () => {
    while (running) {
      try {
        const p = await blob.getProperties();
        if (p.etag !== lastEtag) {
          lastEtag = p.etag;
          lastChange = performance.now();
        }
      } catch {
        // Not created yet.
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  const r = await run(binary, ['copy', file, url, '--blob-type', 'PageBlob', '--from-to', 'LocalBlob', '--log-level', 'ERROR'], {
    env,
    timeoutMs: 10 * 60 * 1000,
  });
  const seconds = (performance.now() - t0) / 1000;
  running = false;
  await watcher;
  const transferSeconds = lastChange > 0 ? (lastChange - t0) / 1000 : seconds;
  if (r.code !== 0 || !/Final Job Status: Completed\b/.test(r.stdout)) {
    const tail = (r.stdout + r.stderr).trim().split('\n').slice(-6).join(' | ');
    return { reason: `AzCopy exited with ${r.code} against Azurite: ${tail}` };
  }
  return { seconds, transferSeconds };
}

export async function runAzureUploadBench(opts: AzureUploadBenchOptions = {}): Promise<AzureUploadBenchResult> {
  const log = opts.log ?? ((s: string) => console.log(s));
  const capacity = opts.sizeBytes ?? 2 * GiB;
  const dataFraction = opts.dataFraction ?? 0.25;
  const blockSize = opts.blockSize ?? MiB;
  const concurrency = opts.concurrency ?? 8;
  const repeats = opts.repeats ?? 3;
  const checksum = opts.checksum ?? 'md5';
  const virtualSize = vhdVirtualSize(capacity);
  const vhdSize = virtualSize + 512;
  const restoreId = 'bench-azure-upload';
  const workDir = opts.workDir ?? mkdtempSync(path.join(os.tmpdir(), 'vmrs-bench-azure-'));
  mkdirSync(workDir, { recursive: true });
  const imageFile = path.join(workDir, 'disk.vhd');

  // Build AzCopy first so its build time never overlaps a timed upload.
  let az: { binary: string; version: string } | { reason: string } = { reason: 'disabled by --no-azcopy' };
  if (opts.azcopy !== false)
    az = await ensureAzcopy(opts.azcopyVersion ?? process.env.VMRESTORE_AZCOPY_VERSION ?? DEFAULT_AZCOPY_VERSION, log);

  log(`creating a ${(capacity / GiB).toFixed(2)} GiB image (${dataFraction * 100}% random) in ${workDir}`);
  const layout = await createImage(imageFile, capacity, dataFraction, restoreId);
  // A loaded machine can take a while to start Azurite.
  const azurite = await startEphemeralAzurite({ location: path.join(workDir, 'azurite'), timeoutMs: 120_000 });
  const fh = await open(imageFile, 'r');
  try {
    const container = azurite.serviceClient.getContainerClient('bench');
    await container.create();

    // Ours and AzCopy alternate so that load from anything else on the machine hits both alike;
    // the reported figures are medians by wall time.
    const ourRuns: (UploadFigures & { zeroBytesSkipped: number; verifyOk: boolean; problems: string[] })[] = [];
    const azRuns: (UploadFigures & { transferSeconds: number; footerOk: boolean })[] = [];
    const azcopy: AzureUploadBenchResult['azcopy'] = { ran: false };
    if ('binary' in az) {
      azcopy.binary = az.binary;
      azcopy.version = az.version;
    } else {
      azcopy.reason = az.reason;
    }
    for (let rep = 1; rep <= repeats; rep++) {
      const ourBlob = container.getPageBlobClient(`ours-${rep}.vhd`);
      const cpu0 = process.cpuUsage();
      const az0 = procCpuSeconds(azurite.pid);
      const t0 = performance.now();
      const res = await uploadFixedVhd({
        blobClient: ourBlob,
        capacityBytes: capacity,
        blocks: fileBlocks(fh, capacity, blockSize),
        restoreId,
        concurrency,
        checksum,
        checksumWorkers: opts.checksumWorkers,
      });
      const ourSeconds = (performance.now() - t0) / 1000;
      const cpu1 = process.cpuUsage(cpu0);
      const az1 = procCpuSeconds(azurite.pid);
      const verify = await verifyUploadedVhd(ourBlob, { capacityBytes: capacity, expectedNonZeroRanges: layout.runs });
      await ourBlob.delete();
      const o = {
        ...figures(ourSeconds, virtualSize, res.bytesSent, res.pageWrites),
        clientCpuSeconds: (cpu1.user + cpu1.system) / 1e6,
        azuriteCpuSeconds: az0 && az1 ? az1.own - az0.own : undefined,
        zeroBytesSkipped: res.zeroBytesSkipped,
        verifyOk: verify.ok,
        problems: verify.problems,
      };
      ourRuns.push(o);
      log(
        `[${rep}/${repeats}] ours:   ${o.seconds.toFixed(2)} s, ${o.virtualMiBps.toFixed(0)} MiB/s of virtual size, ` +
          `${o.sentMiBps.toFixed(0)} MiB/s sent, ${(o.bytesSent / MiB).toFixed(1)} MiB in ${res.pageWrites} writes` +
          `, verify ${verify.ok ? 'ok' : 'FAILED: ' + verify.problems.join('; ')}; cpu ${cpuText(o)}`,
      );

      if ('binary' in az && azcopy.reason === undefined) {
        const name = `azcopy-${rep}.vhd`;
        const self0 = procCpuSeconds('self');
        const az0 = procCpuSeconds(azurite.pid);
        const r = await runAzcopy(az.binary, imageFile, container, name, workDir);
        const self1 = procCpuSeconds('self');
        const az1 = procCpuSeconds(azurite.pid);
        if ('seconds' in r) {
          const azBlob = container.getPageBlobClient(name);
          const sent = await sumPageRanges(azBlob);
          const check = await verifyUploadedVhd(azBlob, { capacityBytes: capacity });
          await azBlob.delete();
          const a = {
            ...figures(r.seconds, virtualSize, sent),
            // AzCopy is a child this process has reaped: its CPU time is in our children's.
            clientCpuSeconds: self0 && self1 ? self1.children - self0.children : undefined,
            azuriteCpuSeconds: az0 && az1 ? az1.own - az0.own : undefined,
            transferSeconds: r.transferSeconds,
            footerOk: check.footer?.checksumValid === true && check.footer.currentSize === virtualSize,
          };
          azRuns.push(a);
          log(
            `[${rep}/${repeats}] azcopy: ${a.seconds.toFixed(2)} s (last write at ${a.transferSeconds.toFixed(2)} s), ` +
              `${a.virtualMiBps.toFixed(0)} MiB/s of virtual size, ` +
              `${a.sentMiBps.toFixed(0)} MiB/s sent, ${(sent / MiB).toFixed(1)} MiB in page ranges (${az.version}); cpu ${cpuText(a)}`,
          );
        } else {
          azcopy.reason = r.reason;
        }
      }
    }
    const ourMedian = median(ourRuns);
    const ours = {
      ...ourMedian,
      concurrency,
      checksum,
      verifyOk: ourRuns.every((r) => r.verifyOk),
      problems: ourRuns.flatMap((r) => r.problems),
      samples: ourRuns.map((r) => r.seconds),
    };
    if (azRuns.length === repeats) {
      const m = median(azRuns);
      azcopy.ran = true;
      azcopy.figures = { ...m, samples: azRuns.map((r) => r.seconds) };
      const t = [...azRuns].sort((x, y) => x.transferSeconds - y.transferSeconds)[Math.floor((azRuns.length - 1) / 2)];
      azcopy.transferSeconds = t.transferSeconds;
      azcopy.transferVirtualMiBps = virtualSize / MiB / t.transferSeconds;
      azcopy.footerOk = azRuns.every((r) => r.footerOk);
    }
    if (!azcopy.ran) log(`azcopy: not used: ${azcopy.reason}`);

    let sequential: UploadFigures | undefined;
    if (!azcopy.ran || opts.withSequential) {
      const seqBlob = container.getPageBlobClient('sequential.vhd');
      const t1 = performance.now();
      const s = await sequentialUpload(seqBlob, fh, vhdSize, checksum);
      sequential = figures((performance.now() - t1) / 1000, virtualSize, s.bytesSent, s.pageWrites);
      await seqBlob.delete();
      log(
        `sequential 4 MiB loop: ${sequential.seconds.toFixed(2)} s, ${sequential.virtualMiBps.toFixed(0)} MiB/s, ` +
          `${(sequential.bytesSent / MiB).toFixed(1)} MiB in ${s.pageWrites} writes`,
      );
    }

    log(
      `median ours: ${ours.virtualMiBps.toFixed(0)} MiB/s virtual, ${ours.sentMiBps.toFixed(0)} MiB/s sent` +
        (azcopy.figures
          ? `; median azcopy: ${azcopy.figures.virtualMiBps.toFixed(0)} MiB/s virtual, ${azcopy.figures.sentMiBps.toFixed(0)} MiB/s sent`
          : ''),
    );
    const baseline = azcopy.ran ? 'azcopy' : 'sequential';
    const baseFigures = azcopy.ran ? azcopy.figures! : sequential!;
    const ratio = ours.virtualMiBps / baseFigures.virtualMiBps;
    const ratioToTransfer = azcopy.transferVirtualMiBps ? ours.virtualMiBps / azcopy.transferVirtualMiBps : undefined;
    log(
      `ratio ours / ${baseline}: ${ratio.toFixed(2)}x by wall time for the same ${(virtualSize / GiB).toFixed(2)} GiB VHD` +
        (ratioToTransfer ? `; ${ratioToTransfer.toFixed(2)}x against AzCopy's last-write time` : ''),
    );
    let pairs: Pick<
      AzureUploadBenchResult,
      'pairRatios' | 'pairRatiosToTransfer' | 'medianPairRatio' | 'medianPairRatioToTransfer' | 'cpu'
    > = {};
    if (azcopy.ran) {
      const pairRatios = ourRuns.map((o, i) => azRuns[i].seconds / o.seconds);
      const pairRatiosToTransfer = ourRuns.map((o, i) => azRuns[i].transferSeconds / o.seconds);
      const cpuOf = (f: UploadFigures) => (f.clientCpuSeconds ?? NaN) + (f.azuriteCpuSeconds ?? NaN);
      const cpuOurs = medianOf(ourRuns.map(cpuOf));
      const cpuAz = medianOf(azRuns.map(cpuOf));
      pairs = {
        pairRatios,
        pairRatiosToTransfer,
        medianPairRatio: medianOf(pairRatios),
        medianPairRatioToTransfer: medianOf(pairRatiosToTransfer),
        cpu: { ours: cpuOurs, azcopy: cpuAz, ratio: cpuAz / cpuOurs },
      };
      log(
        `per repeat: ${pairRatios.map((r) => r.toFixed(2)).join(', ')}x by wall time (median ${pairs.medianPairRatio!.toFixed(2)}x); ` +
          `${pairRatiosToTransfer.map((r) => r.toFixed(2)).join(', ')}x against the last write (median ${pairs.medianPairRatioToTransfer!.toFixed(2)}x); ` +
          `CPU client + Azurite: ours ${cpuOurs.toFixed(1)} s, AzCopy ${cpuAz.toFixed(1)} s (${(cpuAz / cpuOurs).toFixed(2)}x)`,
      );
    }
    return {
      image: {
        capacityBytes: capacity,
        virtualSize,
        dataBytes: layout.dataBytes,
        dataFraction: layout.dataBytes / capacity,
        runs: layout.runs.length,
      },
      ours,
      azcopy,
      sequential,
      baseline,
      ratio,
      ratioToTransfer,
      ...pairs,
    };
  } finally {
    await fh.close();
    await azurite.stop();
    if (!opts.keep && !opts.workDir) rmSync(workDir, { recursive: true, force: true });
  }
}

function parseArgs(argv: string[]): AzureUploadBenchOptions {
  const o: AzureUploadBenchOptions = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--size-gib') o.sizeBytes = Math.round(Number(next()) * GiB);
    else if (a === '--concurrency') o.concurrency = Number(next());
    else if (a === '--repeats') o.repeats = Number(next());
    else if (a === '--checksum') o.checksum = next() as PageChecksum;
    else if (a === '--checksum-workers') o.checksumWorkers = Number(next());
    else if (a === '--no-azcopy') o.azcopy = false;
    else if (a === '--with-sequential') o.withSequential = true;
    else if (a === '--keep') o.keep = true;
    else throw new Error(`unknown option ${a}`);
  }
  return o;
}

if (require.main === module) {
  runAzureUploadBench(parseArgs(process.argv.slice(2)))
    .then((r) => {
      console.log(JSON.stringify(r, null, 2));
      if (!r.ours.verifyOk) process.exitCode = 1;
    })
    .catch((err: unknown) => {
      console.error(err);
      process.exitCode = 1;
    });
}
