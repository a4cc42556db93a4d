/**
 * Whether a VM's Azure VM agent would report: on Azure the agent is a program in the guest, so a Windows VM
 * whose disk was restored without it stays Not Ready. The simulator has no guest to run, so it reads what
 * the agent's first boot would use from the OS disk's own store: the installer staged at
 * \Windows\AzureAgent\WindowsAzureVmAgent.msi and the RunOnce entry in the SOFTWARE hive that installs it.
 * Linux VMs are not inspected (the lab's Linux guests are taken to carry their agent).
 */
import fs from 'node:fs';
import path from 'node:path';
import { readAgentStaging, type AgentStaging } from '../../guest/windows/prep';
import type { DiskStore } from './diskstore';
import type { DiskRec, VmRec } from './state';

export interface AgentCheck {
  ready: boolean;
  /** Why not, when not ready. */
  reason?: string;
  staging?: AgentStaging;
}

/** Identifies one state of a disk's store: any write to it (through a device path too) changes the key. */
function generationOf(file: string): string | undefined {
  try {
    const st = fs.statSync(file, { bigint: true });
    return `${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  } catch {
    return undefined;
  }
}

/** The agent check per OS disk, computed once per disk generation. */
export class AgentProbe {
  private readonly cache = new Map<string, { generation: string; check: Promise<AgentCheck> }>();

  constructor(
    private readonly disks: Pick<DiskStore, 'pathOf'>,
    /** Scratch space for the partition copy the NTFS tools read. */
    private readonly workDir: string,
  ) {}

  /** The check of the VM's OS disk as it is now. */
  async check(vm: Pick<VmRec, 'osType'>, osDisk: DiskRec | undefined): Promise<AgentCheck> {
    if (vm.osType !== 'Windows') return { ready: true };
    if (!osDisk) return { ready: false, reason: 'the VM has no OS disk' };
    return this.checkDisk(osDisk);
  }

  async checkDisk(disk: Pick<DiskRec, 'uniqueId'>): Promise<AgentCheck> {
    const file = this.disks.pathOf(disk);
    const generation = generationOf(file);
    if (generation === undefined) return { ready: false, reason: 'the OS disk has no data' };
    const hit = this.cache.get(disk.uniqueId);
    if (hit && hit.generation === generation) return hit.check;
    const check = this.inspect(file);
    this.cache.set(disk.uniqueId, { generation, check });
    return check;
  }

  /** Forgets a removed disk. */
  forget(disk: Pick<DiskRec, 'uniqueId'>): void {
    this.cache.delete(disk.uniqueId);
  }

  private async inspect(file: string): Promise<AgentCheck> {
    fs.mkdirSync(this.workDir, { recursive: true });
    let staging: AgentStaging;
    try {
      staging = await readAgentStaging(file, this.workDir);
    } catch (err) {
      return { ready: false, reason: `the OS disk could not be read as a Windows disk: ${(err as Error).message}` };
    }
    if (staging.installerSha256 === null) return { ready: false, reason: 'no agent installer is staged on the OS disk', staging };
    if (!staging.staged) return { ready: false, reason: 'no RunOnce entry installs the staged agent', staging };
    return { ready: true, staging };
  }
}

export function agentProbeFor(disks: DiskStore): AgentProbe {
  return new AgentProbe(disks, path.join(path.dirname(disks.dir), 'agent-probe'));
}
