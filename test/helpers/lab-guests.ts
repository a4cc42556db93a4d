import assert from 'node:assert/strict';
import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../src/guest/exec';
import type { GuestImage } from '../../src/lab/guests';
import type { BootCheck, BootCheckName, BootReport } from '../../src/verify';

/** Logs in to a booted lab guest with its test key, trusting only the host keys the build recorded. */
export async function sshIntoGuest(image: GuestImage, port: number, command: string, knownHostsDir: string): Promise<string> {
  const knownHosts = join(knownHostsDir, `known_hosts-${image.name}-${port}`);
  await fsp.writeFile(knownHosts, image.ssh.hostKeys.map((k) => `[127.0.0.1]:${port} ${k}\n`).join(''));
  const r = await run(
    'ssh',
    [
      '-i',
      image.ssh.privateKeyPath,
      '-p',
      String(port),
      '-o',
      `UserKnownHostsFile=${knownHosts}`,
      '-o',
      'StrictHostKeyChecking=yes',
      '-o',
      'BatchMode=yes',
      '-o',
      'ConnectTimeout=30',
      `${image.ssh.user}@127.0.0.1`,
      command,
    ],
    { timeoutMs: 120_000 },
  );
  return r.stdout;
}

/** The named check of a boot report (failing the test when it is missing). */
export function bootCheck(report: BootReport, name: BootCheckName): BootCheck {
  const c = report.checks.find((x) => x.name === name);
  assert.ok(c, `check ${name} missing from ${JSON.stringify(report.checks)}`);
  return c;
}

/** What a failed assertion on a boot shows: the checks, why it stopped, the serial log's tail. */
export function explainBoot(report: BootReport): string {
  return JSON.stringify({ checks: report.checks, stoppedBy: report.stoppedBy, serialTail: report.serialTail }, null, 1);
}
