import { defineQuery, defineSignal } from '@temporalio/workflow';
import { MiB } from './units';
import type { TransportMode } from './vsphere';

export type RestorePhase =
  | 'initializing'
  | 'creating-vm'
  | 'creating-snapshot'
  | 'writing-disks'
  | 'waiting-for-proxy'
  | 'committing-snapshot'
  | 'powering-on'
  | 'verifying-boot'
  | 'compensating'
  | 'completed'
  | 'failed'
  | 'cancelled';

export interface DiskProgress {
  diskIndex: number;
  label: string;
  transport?: TransportMode;
  /** The proxy writing the disk. */
  proxy?: string;
  bytesDone: number;
  bytesTotal: number;
  /** `waiting-for-proxy`: no proxy with a live worker has a free task slot. */
  state: 'pending' | 'waiting-for-proxy' | 'writing' | 'done' | 'failed';
  /** Recent throughput of the writer, as it reported it (absent until it has). */
  bytesPerSecond?: number;
  /** Seconds left at that throughput. */
  etaSeconds?: number;
  /** When the writer last reported (ISO time). */
  reportedAt?: string;
}

/** What a disk writer tells its workflow now and then: bytes done and its recent throughput. */
export interface DiskProgressReport {
  diskIndex: number;
  bytesDone: number;
  bytesPerSecond: number;
  transport?: TransportMode;
  /** The writer's clock (ms since the epoch). */
  at: number;
}

export interface RestoreProgress {
  restoreId: string;
  kind: 'vsphere' | 'azure';
  vmName: string;
  phase: RestorePhase;
  disks: DiskProgress[];
  startedAt: string;
  message?: string;
}

/** What every restore (vSphere or Azure) answers to the `progress` query. */
export const progressQuery = defineQuery<RestoreProgress>('progress');

/** A disk writer's progress: bytes done and its recent throughput (see src/activities/progress-report.ts). */
export const diskProgressSignal = defineSignal<[DiskProgressReport]>('diskProgress');

/**
 * Bytes per second over a sliding window of recent samples: steady enough for an ETA, quick to follow a
 * change of pace. Pure (the caller passes the time), so workflows, activities and the CLI share it.
 */
export class ThroughputMeter {
  private readonly samples: Array<{ at: number; bytes: number }> = [];

  constructor(private readonly windowMs = 10_000) {}

  /** Records that `bytes` were done in total at time `at` (ms); returns the current rate. */
  sample(bytes: number, at: number): number {
    const last = this.samples[this.samples.length - 1];
    // A retry that restarts lower begins a new series rather than reporting a negative rate.
    if (last && bytes < last.bytes) this.samples.length = 0;
    if (last && at <= last.at) last.bytes = Math.max(last.bytes, bytes);
    else this.samples.push({ at, bytes });
    while (this.samples.length > 2 && at - this.samples[1].at >= this.windowMs) this.samples.shift();
    return this.rate();
  }

  /** Bytes per second, 0 until two samples at different times exist. */
  rate(): number {
    if (this.samples.length < 2) return 0;
    const a = this.samples[0];
    const b = this.samples[this.samples.length - 1];
    return b.at > a.at ? ((b.bytes - a.bytes) * 1000) / (b.at - a.at) : 0;
  }
}

/** Seconds left at this rate; undefined when nothing moves yet. */
export function etaSeconds(bytesDone: number, bytesTotal: number, bytesPerSecond: number | undefined): number | undefined {
  if (bytesDone >= bytesTotal) return 0;
  if (!bytesPerSecond || bytesPerSecond <= 0) return undefined;
  return Math.ceil((bytesTotal - bytesDone) / bytesPerSecond);
}

/** `12.3 MB/s` (decimal megabytes, as link speeds and --throttle-mbps are given). */
export function formatRate(bytesPerSecond: number | undefined): string {
  if (!bytesPerSecond || bytesPerSecond <= 0) return '-';
  const mb = bytesPerSecond / 1e6;
  return `${mb >= 100 ? mb.toFixed(0) : mb.toFixed(1)} MB/s`;
}

/** `1h02m`, `4m05s`, `9s`; `-` when unknown. */
export function formatEta(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds)) return '-';
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  if (h > 0) return `${h}h${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m${String(sec).padStart(2, '0')}s`;
  return `${sec}s`;
}

export function diskPercent(d: Pick<DiskProgress, 'bytesDone' | 'bytesTotal' | 'state'>): number {
  if (d.state === 'done') return 100;
  return d.bytesTotal > 0 ? Math.min(100, Math.floor((100 * d.bytesDone) / d.bytesTotal)) : 0;
}

/** Markdown table of per-disk progress, shown in the Web UI's current details. */
export function renderDiskTable(disks: DiskProgress[]): string {
  if (disks.length === 0) return '';
  const rows = disks.map((d) => {
    const live = d.state === 'writing';
    const rate = live ? formatRate(d.bytesPerSecond) : '-';
    const eta = live ? formatEta(d.etaSeconds) : d.state === 'done' ? '0s' : '-';
    return `| ${d.diskIndex} | ${d.label} | ${d.transport ?? '-'} | ${d.state} | ${(d.bytesDone / MiB).toFixed(0)} / ${(d.bytesTotal / MiB).toFixed(0)} MiB | ${diskPercent(d)}% | ${rate} | ${eta} |`;
  });
  return ['| disk | label | transport | state | written | % | throughput | ETA |', '|---|---|---|---|---|---|---|---|', ...rows].join('\n');
}
