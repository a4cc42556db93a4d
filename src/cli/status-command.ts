import { parseArgs } from 'node:util';
import { connectClient, fmtBytes, getRestoreStatus } from '../client/restore';
import type { RestoreVerification } from '../domain/verification';
import { diskPercent, formatEta, formatRate } from '../domain/progress';
import { loadConfig, out, usageError } from './usage';

export async function statusCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, allowPositionals: true, options: { json: { type: 'boolean' } } });
  if (!positionals[0]) usageError('status needs a workflow id');
  const config = loadConfig();
  const { client, connection } = await connectClient(config);
  try {
    const s = await getRestoreStatus(client, positionals[0]);
    const status = s.status === 'CANCELLED' ? 'CANCELED' : s.status;
    if (values.json) {
      out(
        JSON.stringify({
          workflowId: s.workflowId,
          status,
          phase: s.phase,
          disks: s.disks.map((d) => ({
            diskIndex: d.diskIndex,
            label: d.label,
            transport: d.transport,
            proxy: d.proxy,
            state: d.state,
            bytesDone: d.bytesDone,
            bytesTotal: d.bytesTotal,
            bytesPerSecond: d.bytesPerSecond,
            etaSeconds: d.etaSeconds,
          })),
          result: s.result,
          verification: verificationOf(s.result, s.failureDetails),
          error: s.failure,
        }),
      );
    } else {
      out(`${s.workflowId}: ${status} (${s.phase})`);
      for (const d of s.disks) {
        const live = d.state === 'writing' ? `, ${formatRate(d.bytesPerSecond)}, ETA ${formatEta(d.etaSeconds)}` : '';
        out(
          `  disk ${d.diskIndex} ${d.label} [${d.transport ?? '-'}${d.proxy ? ` on ${d.proxy}` : ''}] ${d.state} ${fmtBytes(d.bytesDone)} / ${fmtBytes(d.bytesTotal)} ` +
            `(${diskPercent(d)}%${live})`,
        );
      }
      printGuestWarnings(s.result);
      printVerification(s.result, s.failureDetails);
      if (s.failure) out(`  error: ${s.failure}`);
    }
    return 0;
  } finally {
    await connection.close();
  }
}

/** The verification a result carries, or a failed restore's (in its failure details). */
export function verificationOf(result: unknown, failureDetails: unknown): RestoreVerification | undefined {
  const fromResult = (result as { verification?: RestoreVerification } | undefined)?.verification;
  if (fromResult) return fromResult;
  const d = failureDetails as RestoreVerification | undefined;
  return d && typeof d === 'object' && 'status' in d ? d : undefined;
}

/** The boot verification: verdict, time to SSH banner, each check with its time; the serial tail on failure. */
export function printVerification(result: unknown, failureDetails: unknown): void {
  const v = verificationOf(result, failureDetails);
  if (!v) return;
  const r = v.report;
  if (!r) {
    out(`  boot verification: ${v.status}`);
    return;
  }
  const banner = r.recoveryTimeMs === undefined ? 'no SSH banner' : `SSH banner after ${(r.recoveryTimeMs / 1000).toFixed(1)} s`;
  out(
    `  boot verification: ${v.status}${v.kept ? ' (VM kept)' : ''}, ${r.firmware}/${r.accelerator}, ${banner}, stopped by ${r.stoppedBy}`,
  );
  for (const c of r.checks) {
    const at = c.elapsedMs === undefined ? '' : ` at ${(c.elapsedMs / 1000).toFixed(1)} s`;
    out(`    ${c.status.padEnd(7)} ${c.name}${c.required ? '' : ' (not required)'}${at}: ${c.detail}`);
  }
  if (r.serialTail) {
    out('    serial console (last lines):');
    for (const l of r.serialTail.split('\n')) out(`      ${l}`);
  }
}

/** Guest preparation warnings of an Azure restore result, one line each. */
export function printGuestWarnings(result: unknown): void {
  const warnings = (result as { guestWarnings?: unknown } | undefined)?.guestWarnings;
  if (!Array.isArray(warnings)) return;
  for (const w of warnings) out(`  guest warning: ${String(w)}`);
}
