import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { importRestorePoint } from '../src/repository';
import { openDiskImage } from '../src/repository/formats';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
/** qemu-img and import runs, taken in turn. */
const PAIRS = Number(process.env.VMRESTORE_BENCH_PAIRS ?? 3);

export interface VmdkImportBenchResult {
  subformat: string;
  virtualBytes: number;
  vmdkBytes: number;
  importSeconds: number;
  importMBps: number;
  /** The reader alone: extents iterated, nothing hashed or stored. */
  readOnlyMBps: number;
  qemuImgSeconds: number;
  qemuImgMBps: number;
  /** qemu-img's time over the import's: the median of the pairs. */
  ratioToQemuImg: number;
  /** The same for each pair, in run order. */
  ratios: number[];
  /** `qemu-img convert -t writeback`, which fdatasyncs its output before it exits, as the import does its chunks. */
  qemuImgSyncedSeconds: number;
  ratioToQemuImgSynced: number;
}

/**
 * Imports a 2 GiB VMDK (a quarter random, a quarter compressible text, half zeros, in 8 MiB stripes), as
 * streamOptimized and as monolithicFlat, and compares each with `qemu-img convert -O raw` of the same
 * file. Throughput is virtual bytes per second for both.
 */
export async function runVmdkImportBench(log: (s: string) => void = console.log): Promise<VmdkImportBenchResult[]> {
  const results: VmdkImportBenchResult[] = [];
  for (const subformat of ['streamOptimized', 'monolithicFlat']) results.push(await benchSubformat(subformat, log));
  return results;
}

async function benchSubformat(subformat: string, log: (s: string) => void): Promise<VmdkImportBenchResult> {
  const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'vmrestore-bench-vmdk-'));
  try {
    const raw = path.join(tmp, 'disk.raw');
    const handle = await fs.open(raw, 'w');
    const text = Buffer.from(Array.from({ length: 4096 }, (_, i) => `line ${i} of a log file with some words ${i * 7919}\n`).join(''));
    for (let off = 0; off < 2 * GiB; off += 8 * MiB) {
      const stripe = (off / (8 * MiB)) % 4;
      if (stripe === 0) await handle.write(randomBytes(8 * MiB), 0, 8 * MiB, off);
      if (stripe === 1) {
        const buf = Buffer.alloc(8 * MiB);
        for (let at = 0; at < buf.length; at += text.length) text.copy(buf, at);
        randomBytes(4096).copy(buf, 0);
        await handle.write(buf, 0, buf.length, off);
      }
    }
    await handle.truncate(2 * GiB);
    await handle.close();
    const vmdk = path.join(tmp, 'disk.vmdk');
    const made = spawnSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${subformat}`, raw, vmdk]);
    if (made.status !== 0) throw new Error(`qemu-img convert to ${subformat} failed: ${made.stderr.toString()}`);
    await fs.rm(raw);
    spawnSync('sync');
    // A monolithicFlat image is a descriptor and its -flat.vmdk extent beside it.
    const extent = path.join(tmp, 'disk-flat.vmdk');
    const vmdkBytes = (await fs.stat(subformat === 'monolithicFlat' ? extent : vmdk)).size;

    await fs.writeFile(
      path.join(tmp, 'vm.json'),
      JSON.stringify({
        name: 'bench-vmdk',
        guestOs: 'linux',
        firmware: 'bios',
        cpus: 1,
        memoryMiB: 512,
        nics: [],
        disks: [{ path: 'disk.vmdk', provisioning: 'thin' }],
      }),
    );
    // Each side runs in a fresh process, as qemu-img does: the reader alone (inflate only, nothing hashed or
    // stored), then qemu-img and the whole import into a new repository in turn, so a machine whose speed
    // drifts slows both alike; the ratio is taken pair by pair and its median quoted.
    const runQemuImg = (synced = false): number => {
      const started = process.hrtime.bigint();
      const cache = synced ? ['-t', 'writeback'] : [];
      const out = spawnSync('qemu-img', ['convert', ...cache, '-f', 'vmdk', '-O', 'raw', vmdk, path.join(tmp, 'out.raw')]);
      if (out.status !== 0) throw new Error(`qemu-img convert -O raw failed: ${out.stderr.toString()}`);
      return Number(process.hrtime.bigint() - started) / 1e9;
    };
    const settle = async (): Promise<void> => {
      await fs.rm(path.join(tmp, 'out.raw'), { force: true });
      await fs.rm(path.join(tmp, 'repo'), { recursive: true, force: true });
      // What was just written is still going to disk; let it settle so it does not slow what follows.
      spawnSync('sync');
    };
    const readSeconds = measureInChild('read', vmdk, tmp);
    const pairs: { qemuImg: number; importer: number; qemuImgSynced: number }[] = [];
    for (let i = 0; i < PAIRS; i++) {
      const qemuImg = runQemuImg();
      await settle();
      const importer = measureInChild('import', vmdk, tmp);
      await settle();
      const qemuImgSynced = runQemuImg(true);
      await settle();
      pairs.push({ qemuImg, importer, qemuImgSynced });
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const qemuImgSeconds = median(pairs.map((p) => p.qemuImg));
    const importSeconds = median(pairs.map((p) => p.importer));
    const ratios = pairs.map((p) => Math.round((p.qemuImg / p.importer) * 100) / 100);
    const syncedRatios = pairs.map((p) => Math.round((p.qemuImgSynced / p.importer) * 100) / 100);
    const qemuImgSyncedSeconds = median(pairs.map((p) => p.qemuImgSynced));

    const mbps = (s: number) => Math.round((2 * GiB) / MiB / s);
    const spread = (xs: number[]) =>
      `min ${Math.min(...xs).toFixed(2)} / median ${median(xs).toFixed(2)} / max ${Math.max(...xs).toFixed(2)}`;
    const result = {
      subformat,
      virtualBytes: 2 * GiB,
      vmdkBytes,
      importSeconds: Math.round(importSeconds * 100) / 100,
      importMBps: mbps(importSeconds),
      readOnlyMBps: mbps(readSeconds),
      qemuImgSeconds: Math.round(qemuImgSeconds * 100) / 100,
      qemuImgMBps: mbps(qemuImgSeconds),
      ratioToQemuImg: median(ratios),
      ratios,
      qemuImgSyncedSeconds: Math.round(qemuImgSyncedSeconds * 100) / 100,
      ratioToQemuImgSynced: median(syncedRatios),
    };
    log(
      `2 GiB ${subformat} VMDK (${Math.round(vmdkBytes / MiB)} MiB file): import ${result.importMBps} MiB/s (${result.importSeconds} s; reader alone ${result.readOnlyMBps} MiB/s), ` +
        `qemu-img convert -O raw ${result.qemuImgMBps} MiB/s (${result.qemuImgSeconds} s), ratio ${result.ratioToQemuImg} ` +
        `(median of ${PAIRS} pairs: ${ratios.join(', ')}; import s ${spread(pairs.map((p) => p.importer))}, ` +
        `qemu-img s ${spread(pairs.map((p) => p.qemuImg))}, ratio ${spread(ratios)}). qemu-img only ${subformat === 'streamOptimized' ? 'inflates' : 'reads (skipping holes by SEEK_DATA)'} and writes into the ` +
        `page cache; the import also hashes every non-zero block (sha256) and fdatasyncs each new chunk before it takes its name. ` +
        `qemu-img convert -t writeback (fdatasyncs its output before it exits): ${result.qemuImgSyncedSeconds} s, ratio ` +
        `${spread(syncedRatios)} (pairs: ${syncedRatios.join(', ')}).`,
    );
    return result;
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
  }
}

function measureInChild(mode: 'read' | 'import', vmdk: string, tmp: string): number {
  const r = spawnSync(process.execPath, ['--import', 'tsx', __filename, 'child', mode, vmdk, tmp], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bench child ${mode} failed: ${r.stderr}`);
  return Number(r.stdout.trim().split('\n').pop());
}

async function child(mode: string, vmdk: string, tmp: string): Promise<void> {
  const started = process.hrtime.bigint();
  if (mode === 'read') {
    const image = await openDiskImage(vmdk);
    for await (const extent of image.extents()) void extent;
    await image.close();
  } else {
    await importRestorePoint(path.join(tmp, 'repo'), path.join(tmp, 'vm.json'));
  }
  console.log(Number(process.hrtime.bigint() - started) / 1e9);
}

if (process.argv[2] === 'child') {
  child(process.argv[3], process.argv[4], process.argv[5]).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
