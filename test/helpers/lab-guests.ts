import { promises as fsp } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../src/guest/exec';
import type { GuestImage } from '../../src/lab/guests';

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
