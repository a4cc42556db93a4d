import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RestoreError } from '../../src/domain/errors';
import { fencedRepository, WriterFence, type AttemptProbe } from '../../src/activities/vsphere/writer-fence';
import type { DiskBlock, RepositorySource, RestorePoint } from '../../src/repository';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A server the test answers for: up and current, silent, or saying another attempt has the disk. */
function server(): { probe: AttemptProbe; mode: 'current' | 'silent' | 'superseded'; asked: number } {
  const s = {
    mode: 'current' as 'current' | 'silent' | 'superseded',
    asked: 0,
    probe: async (timeoutMs: number) => {
      s.asked++;
      if (s.mode === 'silent') {
        await sleep(timeoutMs);
        throw new Error('deadline exceeded');
      }
      return s.mode === 'current' ? { current: true } : { current: false, why: 'activity 7 of restore-x is no longer pending' };
    },
  };
  return s;
}

describe('disk writer fence', () => {
  it('lets blocks through while the server answers, holds them once it is silent, and lets them go when it is back', async () => {
    const s = server();
    const fence = new WriterFence(s.probe, 300, 50);
    try {
      await fence.ready();
      s.mode = 'silent';
      await sleep(400);
      let passed = false;
      const waiting = fence.ready().then(() => (passed = true));
      await sleep(200);
      assert.equal(passed, false, 'held while the server is silent');
      s.mode = 'current';
      await waiting;
      assert.equal(passed, true, 'released once the server answered again');
      assert.ok(s.asked > 3);
    } finally {
      fence.stop();
    }
  });

  it('stops the writer for good once the server says another attempt has the disk', async () => {
    const s = server();
    const fence = new WriterFence(s.probe, 300, 50);
    try {
      s.mode = 'superseded';
      await sleep(150);
      await assert.rejects(
        fence.ready(),
        (e: unknown) => e instanceof RestoreError && e.type === 'Superseded' && /no longer pending/.test(e.message),
      );
      s.mode = 'current';
      await sleep(150);
      await assert.rejects(fence.ready(), /no longer pending/, 'superseded stays superseded');
    } finally {
      fence.stop();
    }
  });

  it('holds the repository blocks of a fenced writer, and a cancelled one stops waiting', async () => {
    const s = server();
    const fence = new WriterFence(s.probe, 200, 50);
    const blocks: DiskBlock[] = [0, 1, 2].map((i) => ({ offset: i * 512, length: 512, data: Buffer.alloc(512, i) }) as DiskBlock);
    const repo = {
      location: 'test',
      listRestorePoints: async () => [],
      getRestorePoint: async () => ({}) as RestorePoint,
      readDiskBlocks: () =>
        (async function* () {
          yield* blocks;
        })(),
    } as unknown as RepositorySource;
    const ac = new AbortController();
    const seen: number[] = [];
    try {
      const reading = (async () => {
        for await (const b of fencedRepository(repo, fence).readDiskBlocks({} as RestorePoint, 0, { signal: ac.signal })) {
          seen.push(b.offset);
          if (seen.length === 1) {
            s.mode = 'silent';
            await sleep(300);
          }
        }
      })();
      await sleep(800);
      assert.deepEqual(seen, [0], 'no block after the server went silent');
      ac.abort(new Error('cancelled'));
      await assert.rejects(reading, /cancelled/);
    } finally {
      fence.stop();
    }
  });
});
