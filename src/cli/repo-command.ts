import path from 'node:path';
import { parseArgs } from 'node:util';
import { labStateDir, loadAppConfig } from '../config';
import {
  importOvaRestorePoint,
  importOvfRestorePoint,
  importRestorePoint,
  getRestorePoint,
  listRestorePoints,
  verifyRepository,
} from '../repository';
import { loadLabDemo } from './lab-door';
import { importFromVSphereCommand } from './import-command';
import { loadConfig, out, usageError } from './usage';

export async function repoCommand(sub: string | undefined, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      json: { type: 'boolean' },
      vm: { type: 'string' },
      ovf: { type: 'string' },
      ova: { type: 'string' },
      'from-vsphere': { type: 'string' },
      profile: { type: 'string' },
      datacenter: { type: 'string' },
      'bootable-guests': { type: 'boolean' },
    },
  });
  const repo = repositoryPath();
  switch (sub) {
    case 'import': {
      const sources = [values.vm, values.ovf, values.ova, values['from-vsphere']].filter((v) => v !== undefined);
      if (sources.length !== 1) usageError('repo import needs exactly one of --vm vm.json, --ovf vm.ovf, --ova vm.ova, --from-vsphere VM');
      if (values['from-vsphere'] !== undefined) {
        const config = loadConfig();
        return importFromVSphereCommand(
          config,
          { vmName: values['from-vsphere'], profile: values.profile, datacenter: values.datacenter },
          out,
          values.json,
        );
      }
      if (values.profile !== undefined || values.datacenter !== undefined) usageError('--profile and --datacenter go with --from-vsphere');
      const res = values.vm
        ? await importRestorePoint(repo, values.vm)
        : values.ovf
          ? await importOvfRestorePoint(repo, values.ovf)
          : await importOvaRestorePoint(repo, values.ova!);
      if (values.json) out(JSON.stringify({ restorePointId: res.restorePointId, parentId: res.parentId, stats: res.stats }));
      else out(`restore point ${res.restorePointId} (parent ${res.parentId ?? 'none'}): ${JSON.stringify(res.stats)}`);
      return 0;
    }
    case 'list': {
      const list = await listRestorePoints(repo);
      if (values.json) out(JSON.stringify(list, null, 2));
      else for (const r of list) out(`${r.id}  ${r.vmName}  ${r.createdAt}  parent=${r.parentId ?? '-'}`);
      return 0;
    }
    case 'show': {
      if (!positionals[0]) usageError('repo show needs a restore point id');
      const rp = await getRestorePoint(repo, positionals[0]);
      const { disks, ...head } = rp;
      const summary = {
        ...head,
        disks: disks.map((d) => ({
          index: d.index,
          capacityBytes: d.capacityBytes,
          blocks: d.blocks.length,
          zeroBlocks: d.blocks.filter((b) => b === null).length,
        })),
      };
      out(JSON.stringify(summary, null, 2));
      return 0;
    }
    case 'verify': {
      const res = await verifyRepository(repo, { restorePointId: positionals[0] });
      if (values.json) out(JSON.stringify(res, null, 2));
      else {
        out(`${res.ok ? 'OK' : 'PROBLEMS'}: ${res.chunksChecked} chunks, ${res.bytesChecked} bytes checked`);
        for (const p of res.problems)
          out(`  ${p.restorePointId} VM '${p.vmName}' disk ${p.diskIndex} offset ${p.offset}: chunk ${p.chunk} ${p.problem}`);
      }
      return res.ok ? 0 : 1;
    }
    case 'seed-demo': {
      const seeded = await (
        await loadLabDemo()
      ).seedDemoRepository(repo, values.json ? () => {} : out, { bootableGuests: values['bootable-guests'] });
      if (values.json) out(JSON.stringify(seeded));
      return 0;
    }
    default:
      usageError(`unknown repo command '${sub ?? ''}'`);
  }
}

function repositoryPath(): string {
  if (process.env.VMRESTORE_REPOSITORY) return process.env.VMRESTORE_REPOSITORY;
  try {
    return loadAppConfig().repository.path;
  } catch {
    // Repository commands work without a running lab.
    return path.join(labStateDir(), 'repository');
  }
}
