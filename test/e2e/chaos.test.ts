import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { runChaos } from '../chaos/run';

// A short run of the chaos suite (`npm run chaos` is the full one); the seed is printed to repeat a run.
const seed = Number(process.env.VMRESTORE_CHAOS_SEED ?? Math.floor(Math.random() * 2 ** 31));

describe('chaos (short run)', () => {
  it(`survives worker kills in a disk write, an upload, guest preparation and between activities, a server restart and a termination (seed ${seed})`, async () => {
    const r = await runChaos({ seed, kills: 4, restarts: 1, terminations: 1 });
    assert.deepEqual(r.problems, [], 'every surviving restore completed with identical bytes');
    assert.deepEqual(r.leaked, [], 'nothing leaked');
    assert.equal(r.kills.length, 4);
    assert.ok(r.kills.filter((k) => k.reached).length >= 3, `the kill points were reached: ${JSON.stringify(r.kills)}`);
    for (const k of r.kills) assert.ok(k.secondsLost < 60, `kill ${k.n} (${k.kind}) cost ${k.secondsLost} s`);
    assert.ok(r.restoresCompleted >= 2);
    assert.equal(r.terminated.length, 1);
    assert.equal(r.restarts.length, 1);
  });
});
