/**
 * The configured Azure VM agent installer (azure.windowsAgentInstaller), checked when a Windows restore
 * starts: the file must be a readable, non-empty regular file, and match its configured digest. The
 * digest goes into the plan, and the copy handed to guest preparation is checked against it again.
 */
import { createHash } from 'node:crypto';
import { createReadStream, promises as fsp } from 'node:fs';
import type { AgentInstallerConfig } from '../config';
import type { AgentInstallerPlan } from '../domain/azure';
import { FailureType, RestoreError } from '../domain/errors';

const KEY = 'azure.windowsAgentInstaller';

/** An installer larger than this is not an agent installer (the real one is a few MB). */
const MAX_INSTALLER_BYTES = 512 * 1024 * 1024;

export async function sha256OfFile(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

function configError(message: string): RestoreError {
  return new RestoreError(FailureType.Configuration, `config ${KEY}: ${message}`);
}

export async function checkAgentInstaller(cfg: AgentInstallerConfig): Promise<AgentInstallerPlan> {
  let st;
  try {
    st = await fsp.stat(cfg.path);
  } catch (err) {
    throw configError(`${cfg.path} cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  if (!st.isFile()) throw configError(`${cfg.path} is not a regular file`);
  if (st.size === 0) throw configError(`${cfg.path} is empty`);
  if (st.size > MAX_INSTALLER_BYTES)
    throw configError(`${cfg.path} is ${st.size} bytes, more than an agent installer (${MAX_INSTALLER_BYTES})`);
  let sha256: string;
  try {
    sha256 = await sha256OfFile(cfg.path);
  } catch (err) {
    throw configError(`${cfg.path} cannot be read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  if (cfg.sha256 && cfg.sha256.toLowerCase() !== sha256) {
    throw configError(`${cfg.path} has SHA-256 ${sha256}, not the configured ${cfg.sha256.toLowerCase()}`);
  }
  return { path: cfg.path, sha256, sizeBytes: st.size };
}
