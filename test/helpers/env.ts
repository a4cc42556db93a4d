import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, openSync, readSync, closeSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Client, Connection } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { labConfig, labUp, readLabState } from '../../src/lab';
import type { AppConfig } from '../../src/config';
import { connectClient } from '../../src/client/restore';
import { getRestorePoint, importRestorePoint, readDiskBlocks, listRestorePoints } from '../../src/repository';
import { chunkPath } from '../../src/repository/format';
import { proxyTaskQueue } from '../../src/domain/task-queues';
import { buildDataDiskImage, seedDemoRepository } from '../../src/lab/demo';
import { launchedBy } from './proc-io';
import { MiB } from '../../src/domain/units';
import { buildLinuxDiskImage, type LinuxImageOptions } from '../../src/lab/images/linux-image';

export const ROOT = path.resolve(__dirname, '..', '..');

export interface TestEnv {
  config: AppConfig;
  client: Client;
  connection: Connection;
  taskQueue: string;
  demo: Record<string, string>;
  close(): Promise<void>;
}

/** The real lab (Temporal, vcsim, Azurite), the demo repository, and a client on a test-only task queue. */
export async function openTestEnv(name: string): Promise<TestEnv> {
  await labUp();
  const config = labConfig(readLabState());
  const demo = await seedDemoRepository(config.repository.path);
  const { client, connection } = await connectClient(config);
  const taskQueue = `test-${name}-${randomBytes(3).toString('hex')}`;
  config.temporal.taskQueue = taskQueue;
  // The lab's Temporal keeps its database between runs: end what this test queue left running (its
  // lease workflows, say), since no worker will ever serve that queue again.
  const close = async (): Promise<void> => {
    try {
      for await (const w of client.workflow.list({ query: `TaskQueue = '${taskQueue}' AND ExecutionStatus = 'Running'` })) {
        await client.workflow
          .getHandle(w.workflowId, w.runId)
          .terminate('test task queue closed')
          .catch(() => undefined);
      }
    } finally {
      await connection.close();
    }
  };
  return { config, client, connection, taskQueue, demo, close };
}

export interface WorkerProcess {
  child: ChildProcess;
  output: () => string;
  stop(): Promise<void>;
  kill(): Promise<void>;
}

/** A worker in its own process, so a test can SIGKILL it mid-restore. */
export async function startWorkerProcess(
  taskQueue: string,
  env: NodeJS.ProcessEnv = {},
  args: string[] = [],
  // How to run the command elsewhere (on a host of test/helpers/topology.ts, say); it must exec, not fork.
  launch: (command: string, args: string[]) => { command: string; args: string[] } = (command, args) => ({ command, args }),
): Promise<WorkerProcess> {
  const run = launch(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), 'worker', ...args]);
  const child = spawn(run.command, run.args, {
    env: { ...process.env, VMRESTORE_TASK_QUEUE: taskQueue, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  await new Promise<void>((resolve, reject) => {
    // Bundling the workflows takes seconds alone and minutes on a loaded machine; a worker that never
    // polls is killed, not left running to hold the test process open.
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`worker did not start in 180 s:\n${out}`));
    }, 180_000);
    const onData = () => {
      if (out.includes('polling task queue')) {
        clearTimeout(t);
        resolve();
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`worker exited with ${code} before polling:\n${out}`));
    });
  });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  return {
    child,
    output: () => out,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
    async kill() {
      // Started by another Node, the launcher runs the worker as its child, in a session of its own, which
      // would outlive the launcher by the moment it takes to notice: that child dies with it, as the
      // worker would. (What the worker itself started is left running, as after a real crash.)
      if (child.exitCode === null) {
        for (const pid of [...launchedBy(child.pid!), child.pid!]) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // Gone already.
          }
        }
      }
      await exited;
    },
  };
}

export async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file, { highWaterMark: 4 * 1024 * 1024 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** SHA-256 of a backed-up disk as the repository holds it (zero blocks expanded). */
export async function sha256OfBackedUpDisk(repo: string, restorePointId: string, diskIndex: number): Promise<string> {
  const rp = await getRestorePoint(repo, restorePointId);
  const h = createHash('sha256');
  const zero = Buffer.alloc(rp.blockSize);
  for await (const b of readDiskBlocks(repo, rp, diskIndex, {})) h.update(b.data ?? zero.subarray(0, b.length));
  return h.digest('hex');
}

export function readBytes(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, offset);
    return buf;
  } finally {
    closeSync(fd);
  }
}

export { listRestorePoints };

/** Replays finished workflows' histories against the current workflow code; returns how many replayed. */
export async function replayFinished(client: Client, workflowIds: string[]): Promise<number> {
  const histories = [];
  for (const id of workflowIds) histories.push({ workflowId: id, history: await client.workflow.getHandle(id).fetchHistory() });
  let replayed = 0;
  for await (const r of Worker.runReplayHistories({ workflowsPath: require.resolve('../../src/workflows') }, histories)) {
    if (r.error) throw new Error(`replay of ${r.workflowId} failed: ${String(r.error)}`);
    replayed++;
  }
  return replayed;
}

/**
 * Imports a two-disk VM of random data (32 and 64 MiB) and flips a byte in one chunk in the middle of
 * disk 1, as bit rot in the backup repository would. Returns the chunk's hash and file.
 */
export async function importVmWithCorruptChunk(
  repoDir: string,
  workDir: string,
): Promise<{ restorePointId: string; hash: string; chunkFile: string }> {
  mkdirSync(workDir, { recursive: true });
  const seed = `corrupt-${Date.now()}-${randomBytes(3).toString('hex')}`;
  buildDataDiskImage(path.join(workDir, 'disk0.img'), 32 * 1024 * 1024, [[0, 32 * 1024 * 1024]], `${seed}-0`);
  buildDataDiskImage(path.join(workDir, 'disk1.img'), 64 * 1024 * 1024, [[0, 64 * 1024 * 1024]], `${seed}-1`);
  const restorePointId = await importTestVm(repoDir, workDir, {
    name: 'corrupt-chunk',
    disks: [
      { path: 'disk0.img', provisioning: 'thick' },
      { path: 'disk1.img', provisioning: 'thick' },
    ],
  });
  const rp = await getRestorePoint(repoDir, restorePointId);
  const hash = rp.disks[1].blocks[Math.floor(rp.disks[1].blocks.length / 2)]!;
  const chunkFile = chunkPath(repoDir, hash);
  const bytes = readFileSync(chunkFile);
  bytes[100] ^= 0xff;
  writeFileSync(chunkFile, bytes);
  return { restorePointId, hash, chunkFile };
}

/** Writes a vm.json for disk images in `dir` and imports it as a restore point; returns its id. */
export async function importTestVm(
  repoDir: string,
  dir: string,
  vm: { name: string; firmware?: 'bios' | 'efi'; disks: { path: string; provisioning: 'thin' | 'thick' }[] },
): Promise<string> {
  const file = path.join(dir, 'vm.json');
  writeFileSync(
    file,
    JSON.stringify({ guestOs: 'linux', firmware: 'bios', cpus: 1, memoryMiB: 1024, nics: [{ network: 'VM Network' }], ...vm }),
  );
  return (await importRestorePoint(repoDir, file)).restorePointId;
}

/**
 * A small one-disk Linux VM (128 MiB thin MBR disk, ext4 root, netplan and ufw, 4 MiB used) built in
 * `dir/name` and imported; `image` overrides the disk's options, `firmware` the VM's.
 */
export async function importSmallLinuxVm(
  repoDir: string,
  dir: string,
  name: string,
  opts: { image?: Partial<LinuxImageOptions>; firmware?: 'bios' | 'efi' } = {},
): Promise<string> {
  const vmDir = path.join(dir, name);
  mkdirSync(vmDir, { recursive: true });
  await buildLinuxDiskImage(path.join(vmDir, 'disk0.img'), {
    sizeBytes: 128 * MiB,
    scheme: 'mbr',
    hostname: name.slice(0, 15),
    networkStyle: 'netplan',
    firewall: 'ufw',
    usedMiB: 4,
    ...opts.image,
  });
  return importTestVm(repoDir, vmDir, { name, firmware: opts.firmware ?? 'bios', disks: [{ path: 'disk0.img', provisioning: 'thin' }] });
}

/**
 * Writes a restore point whose disks hold only zero blocks (no chunk data needed), for input checks and
 * restores that need no real bytes. `remove` deletes it again.
 */
export function writeZeroRestorePoint(
  repoDir: string,
  name: string,
  capacities: number[],
  nics: { network: string }[] = [],
): { id: string; remove: () => void } {
  const id = `rp-20990101000000-${randomBytes(3).toString('hex')}`;
  const blockSize = 64 * 1024 * 1024;
  const file = path.join(repoDir, 'restore-points', `${id}.json`);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(
    file,
    JSON.stringify({
      formatVersion: 1,
      id,
      createdAt: new Date().toISOString(),
      parentId: null,
      blockSize,
      vm: {
        name,
        guestOs: 'linux',
        firmware: 'bios',
        cpus: 1,
        memoryMiB: 512,
        nics,
        disks: capacities.map((c, index) => ({
          index,
          label: index === 0 ? 'root' : `data${index}`,
          capacityBytes: c,
          provisioning: 'thin',
        })),
      },
      disks: capacities.map((c, index) => ({ index, capacityBytes: c, blocks: new Array(Math.ceil(c / blockSize)).fill(null) })),
    }),
  );
  return { id, remove: () => rmSync(file) };
}

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the vmrestore CLI in its own process against the lab on `taskQueue`; returns exit code and output. */
export async function runCli(taskQueue: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  try {
    const r = await promisify(execFile)(process.execPath, [path.join(ROOT, 'bin', 'vmrestore.cjs'), ...args], {
      env: { ...process.env, VMRESTORE_TASK_QUEUE: taskQueue, ...env },
      maxBuffer: 16 * 1024 * 1024,
    });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/** A thick VM whose disks hold `sizesMiB` MiB of seeded random data each, imported from images made under `parent`. */
export async function importRandomThickVm(repo: string, parent: string, name: string, sizesMiB: number[]): Promise<string> {
  const dir = mkdtempSync(path.join(parent, `${name}-`));
  const MiB = 1024 * 1024;
  sizesMiB.forEach((s, i) => buildDataDiskImage(path.join(dir, `disk${i}.img`), s * MiB, [[0, s * MiB]], `${name}-${i}-${Date.now()}`));
  return importTestVm(repo, dir, { name, disks: sizesMiB.map((_, i) => ({ path: `disk${i}.img`, provisioning: 'thick' as const })) });
}

/** A worker's start-up lines name no vSphere proxy queue of `taskQueue` (the lab's embedded Azure proxy's may be there). */
export function assertServesNoVSphereProxyQueue(output: string, taskQueue: string): void {
  assert.doesNotMatch(output, new RegExp(`'${proxyTaskQueue(taskQueue, '')}`), 'the control worker serves no vSphere proxy queue');
}
