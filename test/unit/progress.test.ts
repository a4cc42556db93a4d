import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { etaSeconds, formatEta, formatRate, renderDiskTable, ThroughputMeter } from '../../src/domain/progress';
import { DiskProgressReporter } from '../../src/activities/progress-report';
import { createProgressView } from '../../src/cli/progress-view';
import type { DiskProgressReport } from '../../src/domain/progress';

const MiB = 1024 * 1024;

describe('throughput and ETA', () => {
  it('measures bytes per second over the window and restarts after a retry goes back', () => {
    const m = new ThroughputMeter(10_000);
    assert.equal(m.sample(0, 0), 0);
    assert.equal(m.sample(10e6, 1000), 10e6);
    assert.equal(m.sample(30e6, 2000), 15e6);
    // Older samples leave the window: the rate follows the last 10 s.
    for (let t = 3000; t <= 20_000; t += 1000) m.sample(30e6 + ((t - 2000) / 1000) * 5e6, t);
    assert.equal(Math.round(m.rate()), 5e6);
    assert.equal(m.sample(1e6, 21_000), 0, 'a lower total starts a new series');
    assert.equal(m.sample(3e6, 22_000), 2e6);
  });

  it('computes and formats the ETA and the rate', () => {
    assert.equal(etaSeconds(25, 100, 5), 15);
    assert.equal(etaSeconds(100, 100, 0), 0);
    assert.equal(etaSeconds(10, 100, 0), undefined);
    assert.equal(formatEta(9), '9s');
    assert.equal(formatEta(245), '4m05s');
    assert.equal(formatEta(3720), '1h02m');
    assert.equal(formatEta(undefined), '-');
    assert.equal(formatRate(12_345_678), '12.3 MB/s');
    assert.equal(formatRate(250e6), '250 MB/s');
    assert.equal(formatRate(0), '-');
  });

  it('puts throughput and ETA of a writing disk in the Web UI table', () => {
    const table = renderDiskTable([
      {
        diskIndex: 0,
        label: 'root',
        transport: 'nbd',
        bytesDone: 256 * MiB,
        bytesTotal: 1024 * MiB,
        state: 'writing',
        bytesPerSecond: 40e6,
        etaSeconds: 21,
      },
      { diskIndex: 1, label: 'data', transport: 'nbd', bytesDone: 256 * MiB, bytesTotal: 256 * MiB, state: 'done', etaSeconds: 0 },
    ]);
    const rows = table.split('\n');
    assert.match(rows[0], /\| throughput \| ETA \|$/);
    assert.equal(rows[2], '| 0 | root | nbd | writing | 256 / 1024 MiB | 25% | 40.0 MB/s | 21s |');
    assert.equal(rows[3], '| 1 | data | nbd | done | 256 / 256 MiB | 100% | - | 0s |');
  });
});

describe('DiskProgressReporter', () => {
  it('signals at most every interval and every step of the disk, so a disk adds a bounded number of signals', async () => {
    const sent: DiskProgressReport[] = [];
    const r = new DiskProgressReporter({
      diskIndex: 1,
      bytesTotal: 1000 * MiB,
      transport: 'nbd',
      send: async (x) => void sent.push(x),
      minIntervalMs: 3000,
      minStep: 0.04,
    });
    // 10 MiB per second for 100 s, reported every second.
    for (let t = 0; t <= 100; t++) {
      r.update(t * 10 * MiB, t * 1000);
      await Promise.resolve();
      await Promise.resolve();
    }
    assert.ok(sent.length >= 20 && sent.length <= 26, `sent ${sent.length} reports`);
    for (let i = 1; i < sent.length; i++) assert.ok(sent[i].bytesDone - sent[i - 1].bytesDone >= 40 * MiB);
    for (let i = 1; i < sent.length; i++) assert.ok(sent[i].at - sent[i - 1].at >= 3000);
    assert.equal(sent[0].diskIndex, 1);
    assert.equal(sent[0].transport, 'nbd');
    assert.equal(Math.round(sent[sent.length - 1].bytesPerSecond / MiB), 10);
    // After the first report, tiny steps of a huge disk stay quiet however much time passes.
    const quiet: DiskProgressReport[] = [];
    const big = new DiskProgressReporter({ diskIndex: 0, bytesTotal: 1e12, send: async (x) => void quiet.push(x) });
    for (let t = 0; t < 60; t++) {
      big.update(t * 1e6, t * 1000);
      await Promise.resolve();
    }
    assert.equal(quiet.length, 1);
  });

  it('keeps writing when a report cannot be sent', async () => {
    const r = new DiskProgressReporter({ diskIndex: 0, bytesTotal: 100, send: () => Promise.reject(new Error('server away')) });
    r.update(0, 0);
    assert.equal(r.update(50, 5000), 10);
    await new Promise((res) => setImmediate(res));
    assert.equal(r.update(60, 10_000), 6);
  });
});

describe('progress view as plain lines', () => {
  it('prints one line per change with per-disk percent, throughput and ETA, and nothing for repeats', () => {
    const lines: string[] = [];
    const v = createProgressView({ mode: 'lines', print: (l) => lines.push(l) });
    const disk = (bytesDone: number, state: string, bytesPerSecond?: number) => ({
      key: '0',
      label: 'disk0',
      bytesDone,
      bytesTotal: 100 * MiB,
      state,
      detail: 'nbd',
      bytesPerSecond,
    });
    v.update('writing-disks', [disk(25 * MiB, 'writing', 5 * MiB)]);
    v.update('writing-disks', [disk(25 * MiB, 'writing', 5 * MiB)]);
    v.update('completed', [disk(100 * MiB, 'done')]);
    v.stop();
    assert.deepEqual(lines, [
      'writing-disks: disk0[nbd] 25.0 MiB/100.0 MiB 25% 5.2 MB/s ETA 15s',
      'completed: disk0[nbd] 100.0 MiB/100.0 MiB 100% done',
    ]);
  });

  it('draws bars on a terminal stream and never on a pipe', () => {
    const pipe = new PassThrough() as unknown as NodeJS.WriteStream;
    let printed = '';
    const v = createProgressView({ stream: pipe, print: (l) => (printed += l + '\n') });
    v.update('writing-disks', [{ key: '0', label: 'disk0', bytesDone: 1, bytesTotal: 2, state: 'writing' }]);
    v.stop();
    assert.match(printed, /^writing-disks: disk0\[-\] .* 50%/);
    assert.ok(!printed.includes('\u001b['), 'no escape sequences on a pipe');
  });
});
