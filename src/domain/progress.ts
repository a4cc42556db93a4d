import type { DiskProgress } from './restore';

const MiB = 1024 * 1024;

/** Markdown table of per-disk progress, shown in the Web UI's current details. */
export function renderDiskTable(disks: DiskProgress[]): string {
  if (disks.length === 0) return '';
  const rows = disks.map((d) => {
    const pct = d.bytesTotal > 0 ? Math.floor((100 * d.bytesDone) / d.bytesTotal) : 0;
    return `| ${d.diskIndex} | ${d.label} | ${d.transport ?? '-'} | ${d.state} | ${(d.bytesDone / MiB).toFixed(0)} / ${(d.bytesTotal / MiB).toFixed(0)} MiB | ${pct}% |`;
  });
  return ['| disk | label | transport | state | written | % |', '|---|---|---|---|---|---|', ...rows].join('\n');
}
