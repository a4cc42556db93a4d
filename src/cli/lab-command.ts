import { parseArgs } from 'node:util';
import { loadLab } from './lab-door';
import { out, usageError } from './usage';

/** `lab up|status|down`: the embedded lab, loaded through the lab door. */
export async function labCommand(sub: string | undefined, args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { json: { type: 'boolean' }, purge: { type: 'boolean' }, quiet: { type: 'boolean' }, temporal: { type: 'string' } },
  });
  // dev (the CLI's dev server) or cluster (the Temporal server on PostgreSQL); the lab checks the value.
  if (values.temporal !== undefined) process.env.VMRESTORE_LAB_TEMPORAL = values.temporal;
  const log = values.quiet || values.json ? () => {} : out;
  const { labDown, labStatus, labUp } = await loadLab();
  if (sub === 'up') {
    await labUp(log);
    const s = labStatus();
    if (values.json) out(JSON.stringify(s, null, 2));
    else if (!values.quiet)
      out(
        `lab ready: Temporal ${s.temporal?.kind ?? ''} ${s.temporal?.address} (UI ${s.temporal?.ui}), vCenter ${s.vsphere?.url}, blob ${s.blob ? 'up' : 'down'}`,
      );
    return 0;
  }
  if (sub === 'status') {
    const s = labStatus();
    if (values.json) out(JSON.stringify(s, null, 2));
    else {
      out(
        `temporal: ${s.temporal ? `${s.temporal.running ? 'running' : 'stopped'} ${s.temporal.kind} ${s.temporal.address} UI ${s.temporal.ui}` : 'not started'}`,
      );
      out(`vsphere:  ${s.vsphere ? `${s.vsphere.running ? 'running' : 'stopped'} ${s.vsphere.url}` : 'not started'}`);
      out(`blob:     ${s.blob ? (s.blob.running ? 'running' : 'stopped') : 'not started'}`);
      out(`azure:    ${s.azure ? (s.azure.running ? `running ${String(s.azure.armEndpoint)}` : 'stopped') : 'not started'}`);
    }
    return 0;
  }
  if (sub === 'down') {
    await labDown({ purge: values.purge }, log);
    return 0;
  }
  usageError(`unknown lab command '${sub ?? ''}'`);
}
