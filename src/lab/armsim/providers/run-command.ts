/** A VM's runCommand action: the script handed to the configured handler, the result shaped as the agent reports it. */

import type { Reply, ReqCtx } from '../common';
import { invalidParameter, missingParameter, operationNotAllowed } from '../errors';
import { key, type OsType, type VmRec } from '../state';
import { type Json, nowIso, objectAt, optArray, optString } from '../util';
import type { SimContext } from '../context';
import { COMPUTE } from './compute-common';

const LINUX_COMMANDS = ['RunShellScript', 'ifconfig'] as const;

const WINDOWS_COMMANDS = [
  'RunPowerShellScript',
  'ipconfig',
  'EnableAdminAccount',
  'EnableRemotePS',
  'ResetRDPCert',
  'SetRDPPort',
  'RDPSettings',
  'IPConfig',
] as const;

export async function runCommand(sim: SimContext, ctx: ReqCtx, vm: VmRec): Promise<Reply> {
  const body = objectAt(ctx.body, 'body');
  const commandId = optString(body.commandId, 'commandId');
  if (!commandId) throw missingParameter('commandId');
  const allowed: readonly string[] = vm.osType === 'Linux' ? LINUX_COMMANDS : WINDOWS_COMMANDS;
  const canonical = allowed.find((c) => c.toLowerCase() === commandId.toLowerCase());
  if (!canonical) {
    throw invalidParameter(
      `The command '${commandId}' is not available for ${vm.osType} virtual machines. Available commands: ${allowed.join(', ')}.`,
      'commandId',
    );
  }
  const script = (optArray(body.script, 'script') ?? []).map((line, i) => {
    if (typeof line !== 'string') throw invalidParameter(`script[${i}] must be a string`, 'script');
    return line;
  });
  const parameters = (optArray(body.parameters, 'parameters') ?? []).map((p, i) => {
    const o = objectAt(p, `parameters[${i}]`);
    return { name: String(o.name ?? ''), value: String(o.value ?? '') };
  });
  if (vm.powerState === 'deallocated' || vm.powerState === 'deallocating') {
    throw operationNotAllowed(
      `Operation 'RunCommand' is not allowed on VM '${vm.name}' since the VM is deallocated or marked to be deallocated.`,
    );
  }
  if (vm.powerState !== 'running' && vm.powerState !== 'starting') {
    throw operationNotAllowed('The operation requires the VM to be running (or set to run).');
  }
  const out = await sim.runCommandOutput({
    vmName: vm.name,
    resourceGroup: vm.resourceGroup,
    osType: vm.osType,
    commandId: canonical,
    script,
    parameters,
  });
  sim.recordRunCommand({
    at: nowIso(),
    vmId: vm.id,
    vmName: vm.name,
    commandId: canonical,
    script,
    parameters,
    ...out,
  });
  const result = runCommandResult(vm.osType, out);
  const op = sim.startOperation(ctx, {
    provider: COMPUTE,
    location: vm.location,
    kind: 'vmRunCommand',
    resourceKey: key(vm.id),
    action: 'runCommand',
    result,
  });
  sim.save();
  return { status: 202, headers: sim.operationHeaders(ctx, op) };
}

/** The shapes the Linux and Windows run-command handlers report. */
function runCommandResult(osType: OsType, out: { stdout: string; stderr: string; exitCode: number }): Json {
  if (osType === 'Windows') {
    return {
      value: [
        { code: 'ComponentStatus/StdOut/succeeded', level: 'Info', displayStatus: 'Provisioning succeeded', message: out.stdout },
        { code: 'ComponentStatus/StdErr/succeeded', level: 'Info', displayStatus: 'Provisioning succeeded', message: out.stderr },
      ],
    };
  }
  const streams = `\n[stdout]\n${out.stdout}\n[stderr]\n${out.stderr}\n`;
  if (out.exitCode !== 0) {
    return {
      value: [
        {
          code: `ProvisioningState/failed/${out.exitCode}`,
          level: 'Error',
          displayStatus: 'Provisioning failed',
          message: `Enable failed: failed to execute command: command terminated with exit status=${out.exitCode}${streams}`,
        },
      ],
    };
  }
  return {
    value: [
      {
        code: 'ProvisioningState/succeeded',
        level: 'Info',
        displayStatus: 'Provisioning succeeded',
        message: `Enable succeeded: ${streams}`,
      },
    ],
  };
}
