import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { labConfig, labUp, readLabState } from '../src/lab';
import { buildDataDiskImage, seedDemoRepository } from '../src/lab/demo';
import type { TransportMode } from '../src/domain/vsphere';
import { importRestorePoint } from '../src/repository';
import { connectClient, startVSphereRestore } from '../src/client/restore';
import { VSphereClient } from '../src/vsphere';
import { runWorker } from '../src/worker';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

export interface VSphereBenchResult {
  cpSparseMBps: number;
  /** bytesPerDataByte: bytes the transport sent or wrote per byte of (non-zero) data; NBD sends the zeros too. */
  transports: Record<string, { seconds: number; MBps: number; ratioToCp: number; bytesWritten: number; bytesPerDataByte: number }>;
  historyEventsTwoDiskRestore: number;
  /** 1, 2 and 4 disks of the image restored at once (direct-nas) against as many cp at once. */
  scaling: Array<{ disks: number; restoreSeconds: number[]; cpSeconds: number[]; ratios: number[]; ratioToCp: number }>;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const spread = (xs: number[], digits = 2) =>
  `${Math.min(...xs).toFixed(digits)} / ${median(xs).toFixed(digits)} / ${Math.max(...xs).toFixed(digits)}`;
const millis = (t: { seconds?: unknown; nanos?: number | null } | null | undefined) =>
  Number(t!.seconds) * 1000 + Math.floor((t!.nanos ?? 0) / 1e6);

/** `copies` of `image` made at once with `cp --sparse=always`, each followed by `sync` of its copy; wall seconds. */
async function cpAtOnce(image: string, dir: string, copies: number): Promise<number> {
  const targets = Array.from({ length: copies }, (_, i) => path.join(dir, `cp-${copies}-${i}.img`));
  const t = process.hrtime.bigint();
  await Promise.all(
    targets.map(
      (dst) =>
        new Promise<void>((resolve, reject) => {
          const child = spawn('sh', ['-c', 'cp --sparse=always "$1" "$2" && sync "$2"', 'cp', image, dst], { stdio: 'ignore' });
          child.on('error', reject);
          child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`cp of ${image} to ${dst} exited with ${code}`))));
        }),
    ),
  );
  const seconds = Number(process.hrtime.bigint() - t) / 1e9;
  for (const dst of targets) rmSync(dst);
  return seconds;
}

/** Restores a 1 GiB disk (half random, half zeros) through direct-nas and nbd and compares with cp. */
export async function runVSphereBench(log: (s: string) => void = console.log): Promise<VSphereBenchResult> {
  await labUp();
  const config = labConfig(readLabState());
  config.temporal.taskQueue = `bench-${Date.now().toString(36)}`;
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-bench-'));
  const stop = new AbortController();
  const stopped = new Promise<void>((r) => stop.signal.addEventListener('abort', () => r()));
  const worker = runWorker({ config, until: stopped });
  const { client, connection } = await connectClient(config);
  const v = readLabState().vsphere!;
  const vs = await VSphereClient.connect({ url: v.url, username: v.username, password: v.password, thumbprint: v.thumbprint });
  try {
    const image = path.join(tmp, 'disk0.img');
    const runs: Array<[number, number]> = [];
    for (let off = 0; off < GiB; off += 8 * MiB) runs.push([off, 4 * MiB]);
    buildDataDiskImage(image, GiB, runs, 'bench');
    writeFileSync(
      path.join(tmp, 'vm.json'),
      JSON.stringify({
        name: 'bench-1g',
        guestOs: 'linux',
        firmware: 'bios',
        cpus: 1,
        memoryMiB: 512,
        nics: [],
        disks: [{ path: 'disk0.img', provisioning: 'thick' }],
      }),
    );
    const { restorePointId } = await importRestorePoint(config.repository.path, path.join(tmp, 'vm.json'));

    const cpTimes: number[] = [];
    for (let i = 0; i < 3; i++) {
      const dst = path.join(tmp, `cp-${i}.img`);
      const t = process.hrtime.bigint();
      const r = spawnSync('cp', ['--sparse=always', image, dst]);
      spawnSync('sync', [dst]);
      cpTimes.push(Number(process.hrtime.bigint() - t) / 1e9);
      if (r.status !== 0) throw new Error(`cp failed: ${r.stderr}`);
      rmSync(dst);
    }
    const cpSeconds = [...cpTimes].sort((a, b) => a - b)[1];
    const cpMBps = GiB / 1e6 / cpSeconds;
    log(`cp --sparse=always of the 1 GiB raw image: ${cpMBps.toFixed(0)} MB/s (median of 3, ${cpSeconds.toFixed(2)} s, with sync)`);

    const transports: VSphereBenchResult['transports'] = {};
    const dc = await vs.datacenter('DC0');
    const dataBytes = runs.reduce((sum, [, len]) => sum + len, 0);
    for (const transport of ['direct-nas', 'direct-san', 'hotadd', 'nbd'] as TransportMode[]) {
      // Direct SAN writes the LUN-backed datastore (src/lab/storage.ts); skipped where the lab has no LUN.
      const san = readLabState().vsphere?.storage?.san;
      if (transport === 'direct-san' && !san) continue;
      const datastore = transport === 'direct-san' ? san?.datastore : undefined;
      const secs: number[] = [];
      let bytesWritten = 0;
      for (let i = 0; i < 3; i++) {
        const vmName = `bench-${transport}-${i}-${Date.now().toString(36)}`;
        const handle = await startVSphereRestore(
          client,
          { restorePointId, vmName, transport, datastore },
          { taskQueue: config.temporal.taskQueue },
        );
        const result = await handle.result();
        secs.push(result.disks[0].seconds);
        bytesWritten = result.disks[0].bytesWritten;
        await (await vs.findVmByName(dc, vmName))?.destroy();
      }
      const seconds = [...secs].sort((a, b) => a - b)[1];
      const MBps = GiB / 1e6 / seconds;
      const bytesPerDataByte = bytesWritten / dataBytes;
      transports[transport] = { seconds, MBps, ratioToCp: MBps / cpMBps, bytesWritten, bytesPerDataByte };
      log(
        `${transport}: 1 GiB disk in ${seconds.toFixed(2)} s = ${MBps.toFixed(0)} MB/s (median of 3), ${(MBps / cpMBps).toFixed(2)}x cp, ` +
          `${(bytesWritten / MiB).toFixed(0)} MiB ${transport === 'nbd' ? 'sent' : 'written'} for ${(dataBytes / MiB).toFixed(0)} MiB of data (${bytesPerDataByte.toFixed(2)} bytes per data byte)`,
      );
    }

    // The same image as 1, 2 and 4 disks of one VM, all written at once, against as many cp at once. The
    // restore's time runs from the first writeDisk's start to the last one's completion in history.
    const scaling: VSphereBenchResult['scaling'] = [];
    for (const disks of [1, 2, 4]) {
      const vmJson = path.join(tmp, `vm-${disks}.json`);
      writeFileSync(
        vmJson,
        JSON.stringify({
          name: `bench-${disks}x1g`,
          guestOs: 'linux',
          firmware: 'bios',
          cpus: 1,
          memoryMiB: 512,
          nics: [],
          disks: Array.from({ length: disks }, () => ({ path: 'disk0.img', provisioning: 'thick' })),
        }),
      );
      const { restorePointId: rp } = await importRestorePoint(config.repository.path, vmJson);
      const restoreSeconds: number[] = [];
      const cpSeconds: number[] = [];
      for (let i = 0; i < 3; i++) {
        cpSeconds.push(await cpAtOnce(image, tmp, disks));
        const vmName = `bench-nas-${disks}x-${i}-${Date.now().toString(36)}`;
        const handle = await startVSphereRestore(
          client,
          { restorePointId: rp, vmName, transport: 'direct-nas', diskConcurrency: disks },
          { taskQueue: config.temporal.taskQueue },
        );
        await handle.result();
        const events = (await handle.fetchHistory()).events ?? [];
        const writes = new Set<string>();
        let first = Infinity;
        let last = 0;
        for (const e of events) {
          if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'writeDisk') writes.add(String(e.eventId));
          const started = e.activityTaskStartedEventAttributes;
          if (started && writes.has(String(started.scheduledEventId))) first = Math.min(first, millis(e.eventTime));
          const done = e.activityTaskCompletedEventAttributes;
          if (done && writes.has(String(done.scheduledEventId))) last = Math.max(last, millis(e.eventTime));
        }
        restoreSeconds.push((last - first) / 1000);
        await (await vs.findVmByName(dc, vmName))?.destroy();
      }
      const ratios = cpSeconds.map((c, i) => c / restoreSeconds[i]);
      scaling.push({ disks, restoreSeconds, cpSeconds, ratios, ratioToCp: median(ratios) });
      log(
        `direct-nas, ${disks} disk${disks > 1 ? 's' : ''} of 1 GiB at once: ${((disks * GiB) / 1e6 / median(restoreSeconds)).toFixed(0)} MB/s ` +
          `(s min/median/max ${spread(restoreSeconds)}), ${disks} cp at once ${spread(cpSeconds)} s; ` +
          `ratio (cp time / restore time, pair by pair) ${spread(ratios)}`,
      );
    }

    const demo = await seedDemoRepository(config.repository.path);
    const vmName = `bench-history-${Date.now().toString(36)}`;
    const handle = await startVSphereRestore(
      client,
      { restorePointId: demo['demo-thick'], vmName, transport: 'hotadd' },
      { taskQueue: config.temporal.taskQueue },
    );
    await handle.result();
    const events = (await handle.fetchHistory()).events?.length ?? 0;
    log(`history events of a two-disk HotAdd restore (demo-thick): ${events}`);
    await (await vs.findVmByName(dc, vmName))?.destroy();
    return { cpSparseMBps: cpMBps, transports, historyEventsTwoDiskRestore: events, scaling };
  } finally {
    stop.abort();
    await worker;
    await connection.close();
    await vs.logout().catch(() => {});
    rmSync(tmp, { recursive: true, force: true });
  }
}
