/**
 * Entry point of the isolated guest preparation process (see isolation.ts). Reads its request from
 * argv, prepares the image, and sends the result (changes and warnings only) on the IPC channel.
 */
import { RestoreError } from '../domain/errors';
import type { ChildMessage, GuestPrepRequest, SandboxReport } from './isolation';
import { prepareLinuxDiskDetailed } from './linux-prep';
import { prepareWindowsDiskDetailed } from './windows-prep';

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
        : await prepareLinuxDiskDetailed(req.imagePath);
    await send({ ok: true, result: { changes: result.changes, warnings: result.warnings }, sandbox: report() });
  } catch (e) {
    const err = e instanceof Error ? e : new Error(String(e));
    const type = e instanceof RestoreError ? e.type : 'GuestPreparation';
    await send({ ok: false, error: { type, message: err.message, name: err.name }, sandbox: report() });
  }
  process.disconnect?.();
}

void main();
