/** The lab's stand-in for the Azure VM agent installer (azure.windowsAgentInstaller in the lab config). */
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { labDir } from './lab';

/** Content of the lab's stand-in for WindowsAzureVmAgent.msi: the same bytes every time, so staging stays idempotent. */
export const LAB_AGENT_INSTALLER_CONTENT = Buffer.from(
  'vmrestore lab stand-in for WindowsAzureVmAgent.msi: not an installer.\r\n' +
    'The lab ARM simulator reports the VM agent Ready for a Windows VM whose OS disk carries this file at\r\n' +
    '\\Windows\\AzureAgent\\WindowsAzureVmAgent.msi and the RunOnce entry that installs it. Configure the real\r\n' +
    'installer (https://go.microsoft.com/fwlink/?LinkID=394789) as azure.windowsAgentInstaller outside the lab.\r\n',
);

/** Writes the lab's stand-in agent installer under the lab dir (once) and returns its path. */
export function labAgentInstaller(): string {
  const dir = path.join(labDir(), 'azure-agent');
  const file = path.join(dir, 'WindowsAzureVmAgent.lab-stand-in.msi');
  const current = existsSync(file) ? readFileSync(file) : undefined;
  if (!current?.equals(LAB_AGENT_INSTALLER_CONTENT)) {
    mkdirSync(dir, { recursive: true });
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, LAB_AGENT_INSTALLER_CONTENT);
    renameSync(tmp, file);
  }
  return file;
}
