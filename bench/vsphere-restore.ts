import { spawnSync } from 'node:child_process';
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
    return { cpSparseMBps: cpMBps, transports, historyEventsTwoDiskRestore: events };
  } finally {
    stop.abort();
    await worker;
    await connection.close();
    await vs.logout().catch(() => {});
    rmSync(tmp, { recursive: true, force: true });
  }
}
