import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/**
 * The `skip` value for tests that need a tool or a privilege: false when it is there, else the reason.
 * Under CI (CI=true) a missing requirement fails the file instead, so a green CI run never hides a
 * suite that did not run.
 */
export function skipWithout(present: boolean, reason: string): string | false {
  if (present) return false;
  if (process.env.CI === 'true') throw new Error(`${reason}, and under CI=true a missing requirement fails instead of skipping`);
  return reason;
}

/** Root and /dev/fuse: what the ntfs-3g FUSE mounts of the Windows suites need. */
export const noFuse = (): string | false =>
  skipWithout(process.getuid?.() === 0 && existsSync('/dev/fuse'), 'needs root and /dev/fuse for the ntfs-3g FUSE mount');

/** A command that answers `--version` (qemu-img, say). */
export function noTool(command: string): string | false {
  let present = true;
  try {
    execFileSync(command, ['--version'], { stdio: 'ignore' });
  } catch {
    present = false;
  }
  return skipWithout(present, `${command} not installed`);
}
