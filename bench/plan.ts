import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { labConfig, labUp, readLabState } from '../src/lab';
import type { PlanSpec, PlanVm } from '../src/domain/plan';
import { buildLinuxDiskImage } from '../src/lab/images/linux-image';
import { importRestorePoint } from '../src/repository';
import { startPlan } from '../src/client/plan';
import { connectClient } from '../src/client/restore';
import { startWorkerProcess } from '../test/helpers/env';

const MiB = 1024 * 1024;

export interface PlanBenchResult {
  vms: number;
  seconds: number;
  restoresPerMinute: number;
  planRuns: number;
  planHistoryEvents: number;
  maxRunHistoryEvents: number;
  childHistoryEventsMedian: number;
  workerPeakRssMiB: number;
}

/** Resident set size of a process in KiB: now and its peak (VmHWM). */
function rss(pid: number): { now: number; peak: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? 0);
  return { now: kib('VmRSS'), peak: kib('VmHWM') };
}

/**
 * A plan of `count` small VMs, half to vSphere and half to Azure (with guest preparation on the helper
 * appliance), in groups of ten, on a worker process of its own: restores per minute, the plan's history
 * events over all its runs, and the worker's peak memory.
 */
export async function runPlanBench(log: (s: string) => void = console.log, count = 50): Promise<PlanBenchResult> {
  await labUp();
  const config = labConfig(readLabState());
  const taskQueue = `bench-plan-${Date.now().toString(36)}`;
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-bench-plan-'));
  const worker = await startWorkerProcess(taskQueue, { VMRESTORE_AZURE_HELPER_IDLE_SECONDS: '5' });
  const { client, connection } = await connectClient(config);
  try {
    // The demo's Linux disk, made tiny: MBR, ext4 root with netplan and ufw, 4 MiB used of 128 MiB.
    await buildLinuxDiskImage(path.join(tmp, 'disk0.img'), {
      sizeBytes: 128 * MiB,
      scheme: 'mbr',
      hostname: 'bench',
      networkStyle: 'netplan',
      firewall: 'ufw',
      usedMiB: 4,
    });
    writeFileSync(
      path.join(tmp, 'vm.json'),
      JSON.stringify({
        name: 'bench-tiny',
        guestOs: 'linux',
        firmware: 'bios',
        cpus: 1,
        memoryMiB: 1024,
        nics: [{ network: 'VM Network' }],
        disks: [{ path: 'disk0.img', provisioning: 'thin' }],
      }),
    );
    const { restorePointId } = await importRestorePoint(config.repository.path, path.join(tmp, 'vm.json'));
    const tag = taskQueue.slice(-6);
    const vms: PlanVm[] = Array.from({ length: count }, (_, i) =>
      i % 2 === 0
        ? {
            target: 'vsphere',
            restorePointId,
            vmName: `bp-${tag}-v${i}`,
            transport: 'auto',
            diskFormat: 'thin',
            powerOn: false,
            keepOnFailure: false,
          }
        : { target: 'azure', restorePointId, vmName: `bp-${tag}-a${i}`, keepOnFailure: false },
    );
    const plan: PlanSpec = {
      name: `bench-${tag}`,
      limits: { restoresPerPlan: 8, disksPerDatastore: 4, disksPerHost: 4, uploadsPerStorageAccount: 4, restoresPerRegion: 8 },
      groups: Array.from({ length: Math.ceil(count / 10) }, (_, g) => ({ name: `g${g + 1}`, vms: vms.slice(g * 10, g * 10 + 10) })),
    };
    let peakNow = 0;
    const sampler = setInterval(() => (peakNow = Math.max(peakNow, rss(worker.child.pid!).now)), 500);
    const t0 = Date.now();
    const handle = await startPlan(client, plan, { taskQueue });
    const result = await handle.result();
    const seconds = (Date.now() - t0) / 1000;
    clearInterval(sampler);
    const peak = Math.max(peakNow, rss(worker.child.pid!).peak);
    const failed = result.vms.filter((v) => v.state !== 'completed');
    if (failed.length)
      throw new Error(`${failed.length} restores did not complete: ${failed.map((v) => `${v.vmName}: ${v.error}`).join('; ')}`);

    const runs: number[] = [];
    for await (const w of client.workflow.list({ query: `WorkflowId = '${handle.workflowId}'` })) runs.push(w.historyLength);
    const children: number[] = [];
    for (const v of result.vms) children.push((await client.workflow.getHandle(v.workflowId).describe()).historyLength);
    children.sort((a, b) => a - b);
    const out: PlanBenchResult = {
      vms: count,
      seconds,
      restoresPerMinute: (count / seconds) * 60,
      planRuns: runs.length,
      planHistoryEvents: runs.reduce((a, b) => a + b, 0),
      maxRunHistoryEvents: Math.max(...runs),
      childHistoryEventsMedian: children[Math.floor(children.length / 2)],
      workerPeakRssMiB: peak / 1024,
    };
    log(
      `plan of ${count} VMs (${count / 2} vSphere, ${count / 2} Azure with guest preparation; 128 MiB disks, 4 MiB used): ` +
        `${seconds.toFixed(0)} s, ${out.restoresPerMinute.toFixed(1)} restores/min; plan history ${out.planHistoryEvents} events ` +
        `in ${out.planRuns} run(s) (largest ${out.maxRunHistoryEvents}), a child's median ${out.childHistoryEventsMedian}; ` +
        `worker peak RSS ${out.workerPeakRssMiB.toFixed(0)} MiB`,
    );
    return out;
  } finally {
    await worker.stop();
    for await (const w of client.workflow.list({ query: `TaskQueue = '${taskQueue}' AND ExecutionStatus = 'Running'` })) {
      await client.workflow
        .getHandle(w.workflowId, w.runId)
        .terminate('bench done')
        .catch(() => undefined);
    }
    await connection.close();
    rmSync(tmp, { recursive: true, force: true });
  }
}
