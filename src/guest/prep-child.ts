/**
 * Entry point of the isolated guest preparation process (see isolation.ts). Reads its request from
 * argv, prepares the image, and sends the result (changes and warnings only) on the IPC channel.
 */
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RestoreError } from '../domain/errors';
import type { ChildMessage, GuestPrepChildResult, GuestPrepRequest, SandboxReport } from './isolation';
import { dataDiskFilesystems, prepareLinuxDiskDetailed } from './linux/prep';
import { convertUefiToBios } from './disk/uefi-to-bios';
import { prepareWindowsDiskDetailed } from './windows/prep';

function report(): SandboxReport {
  return {
    pid: process.pid,
    uid: process.getuid?.() ?? -1,
    gid: process.getgid?.() ?? -1,
    groups: process.getgroups?.() ?? [],
    envKeys: Object.keys(process.env).sort(),
  };
}

function send(m: ChildMessage): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send) {
      process.stderr.write('guest preparation child started without an IPC channel\n');
      process.exitCode = 2;
      resolve();
      return;
    }
    process.send(m, () => resolve());
  });
}

async function main(): Promise<void> {
  const req = JSON.parse(process.argv[process.argv.length - 1]!) as GuestPrepRequest;
  try {
    const result =
      req.osType === 'Windows'
        ? await prepareWindowsDiskDetailed(req.imagePath, { agentInstallerPath: req.agentInstallerPath })
        : await prepareLinuxDiskDetailed(req.imagePath, {
            dataDisks: req.dataDiskPaths?.length ? await dataDiskFilesystems(req.dataDiskPaths) : undefined,
          });
    const out: GuestPrepChildResult = { changes: result.changes, warnings: result.warnings };
    if (req.bootConversion === 'uefi-to-bios') {
      const workDir = mkdtempSync(path.join(os.tmpdir(), 'uefi-to-bios-'));
      const conv = await convertUefiToBios(req.imagePath, { osType: req.osType === 'Windows' ? 'windows' : 'linux', workDir });
      out.bootConversion = { changes: conv.changes, warnings: conv.warnings };
    }
    await send({ ok: true, result: out, sandbox: report() });
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    const type = e instanceof RestoreError ? e.type : 'GuestPreparation';
    await send({ ok: false, error: { type, message: err.message, name: err.name }, sandbox: report() });
  }
  process.disconnect?.();
}

void main();
