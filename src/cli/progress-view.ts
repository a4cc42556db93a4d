import { MultiBar, Presets, type SingleBar } from 'cli-progress';
import { etaSeconds, formatEta, formatRate, ThroughputMeter } from '../domain/progress';

/**
 * Live progress for people at a terminal: one bar per item (a disk of a restore, a VM of a plan) under a
 * title line, drawn by cli-progress when the stream is a terminal, and plain lines (one when anything but
 * the clock changes) when it is not, so logs and pipes stay readable.
 */
export interface ProgressItem {
  /** Stable identity of the row across updates. */
  key: string;
  label: string;
  bytesDone: number;
  bytesTotal: number;
  /** `pending`, `writing`, `done`, `failed`, or any short word the caller uses. */
  state: string;
  /** A short note shown beside the state (the transport, the upload). */
  detail?: string;
  /** Throughput as the worker measured it; measured here from successive updates when absent. */
  bytesPerSecond?: number;
  etaSeconds?: number;
}

export interface ProgressView {
  update(title: string, items: ProgressItem[]): void;
  /** A line of its own, above the bars on a terminal. */
  log(line: string): void;
  /** Draws the last state for good; later output goes below it. */
  stop(): void;
}

export interface ProgressViewOptions {
  stream?: NodeJS.WriteStream;
  /** Bars or lines; by default bars exactly when the stream is a terminal. */
  mode?: 'bars' | 'lines';
  /** Where plain lines go (default: the stream). */
  print?: (line: string) => void;
}

export function createProgressView(opts: ProgressViewOptions = {}): ProgressView {
  const stream = opts.stream ?? process.stdout;
  const mode = opts.mode ?? (stream.isTTY ? 'bars' : 'lines');
  const print = opts.print ?? ((line: string) => stream.write(line + '\n'));
  return mode === 'bars' ? new BarsView(stream) : new LinesView(print);
}

/** The figures a row shows: its own throughput and ETA, or what successive updates measured. */
class Rates {
  private readonly meters = new Map<string, ThroughputMeter>();

  of(item: ProgressItem, now: number): { rate?: number; eta?: number; percent: number } {
    let meter = this.meters.get(item.key);
    if (!meter) this.meters.set(item.key, (meter = new ThroughputMeter()));
    const measured = meter.sample(item.bytesDone, now);
    const done = item.state === 'done';
    const percent = done ? 100 : item.bytesTotal > 0 ? Math.min(100, Math.floor((100 * item.bytesDone) / item.bytesTotal)) : 0;
    if (done || item.state === 'pending' || item.state === 'failed') return { percent, eta: done ? 0 : undefined };
    const rate = item.bytesPerSecond && item.bytesPerSecond > 0 ? item.bytesPerSecond : measured > 0 ? measured : undefined;
    return { rate, eta: item.etaSeconds ?? etaSeconds(item.bytesDone, item.bytesTotal, rate), percent };
  }
}

export function fmtSize(n: number): string {
  return n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(2)} GiB` : `${(n / 1024 ** 2).toFixed(1)} MiB`;
}

class LinesView implements ProgressView {
  private readonly rates = new Rates();
  private last = '';

  constructor(private readonly print: (line: string) => void) {}

  update(title: string, items: ProgressItem[]): void {
    const now = Date.now();
    const parts = items.map((i) => {
      const r = this.rates.of(i, now);
      const live = i.state === 'writing' ? ` ${formatRate(r.rate)} ETA ${formatEta(r.eta)}` : ` ${i.state}`;
      return `${i.label}[${i.detail ?? '-'}] ${fmtSize(i.bytesDone)}/${fmtSize(i.bytesTotal)} ${r.percent}%${live}`;
    });
    const line = `${title}${parts.length ? ': ' + parts.join(', ') : ''}`;
    if (line !== this.last) this.print(line);
    this.last = line;
  }

  log(line: string): void {
    this.print(line);
  }

  stop(): void {}
}

interface BarPayload {
  label: string;
  done: string;
  size: string;
  rate: string;
  remaining: string;
  state: string;
  title: string;
}

class BarsView implements ProgressView {
  private readonly rates = new Rates();
  private readonly multi: MultiBar;
  private header?: SingleBar;
  private readonly bars = new Map<string, SingleBar>();
  private labelWidth = 0;
  private stopped = false;
  // Ctrl-C leaves the terminal as it found it (cursor shown, bars kept).
  private readonly onInterrupt = () => {
    this.stop();
    process.exit(130);
  };

  constructor(private readonly stream: NodeJS.WriteStream) {
    process.once('SIGINT', this.onInterrupt);
    this.multi = new MultiBar(
      {
        stream,
        format: '{label} {bar} {percentage}% | {done} / {size} | {rate} | ETA {remaining} | {state}',
        barsize: 30,
        hideCursor: true,
        clearOnComplete: false,
        stopOnComplete: false,
        autopadding: true,
        fps: 5,
        // Redraws while a value stands still too, so rate and ETA follow the clock.
        forceRedraw: true,
      },
      Presets.shades_classic,
    );
  }

  update(title: string, items: ProgressItem[]): void {
    if (this.stopped) return;
    const now = Date.now();
    const empty: BarPayload = { label: '', done: '', size: '', rate: '', remaining: '', state: '', title };
    if (!this.header) this.header = this.multi.create(1, 0, empty, { format: '{title}' });
    this.header.update(0, { ...empty, title });
    this.labelWidth = Math.max(this.labelWidth, ...items.map((i) => i.label.length));
    for (const i of items) {
      const r = this.rates.of(i, now);
      const payload: BarPayload = {
        label: i.label.padEnd(this.labelWidth),
        done: fmtSize(i.bytesDone).padStart(10),
        size: fmtSize(i.bytesTotal),
        rate: formatRate(r.rate).padStart(10),
        remaining: formatEta(r.eta).padEnd(6),
        state: `${i.state}${i.detail ? ` (${i.detail})` : ''}`,
        title,
      };
      // Bars count percent, not bytes: a disk's size may be unknown at first and change later.
      let bar = this.bars.get(i.key);
      if (!bar) this.bars.set(i.key, (bar = this.multi.create(100, r.percent, payload)));
      else bar.update(r.percent, payload);
    }
  }

  log(line: string): void {
    if (this.stopped) this.stream.write(line + '\n');
    else this.multi.log(line + '\n');
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    process.removeListener('SIGINT', this.onInterrupt);
    this.multi.stop();
  }
}
