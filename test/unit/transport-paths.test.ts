import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../../src/config';
import { deviceNamesForDiskUuid } from '../../src/transport/hotadd';
import { lunRanges, type SanBlockMap } from '../../src/transport/san-host';

describe('HotAdd device names', () => {
  it("are udev's by-id names for the disk's NAA identifier (its backing UUID)", () => {
    assert.deepEqual(deviceNamesForDiskUuid('6000C298-ff3e-b8d1-5d2c-5a2a1c4a0a0b'), [
      'wwn-0x6000c298ff3eb8d15d2c5a2a1c4a0a0b',
      'scsi-36000c298ff3eb8d15d2c5a2a1c4a0a0b',
    ]);
  });
  it('refuse a UUID that is not 32 hex digits', () => {
    assert.throws(() => deviceNamesForDiskUuid('6000C29-../../etc'), /not 32 hex digits/);
    assert.throws(() => deviceNamesForDiskUuid(''), /not 32 hex digits/);
  });
});

describe('SAN block map', () => {
  const map: SanBlockMap = {
    fileSize: 12 << 20,
    extents: [
      { logical: 0, physical: 100 << 20, length: 4 << 20, unwritten: false },
      { logical: 4 << 20, physical: 300 << 20, length: 4 << 20, unwritten: true },
      { logical: 10 << 20, physical: 500 << 20, length: 2 << 20, unwritten: false },
    ],
  };
  it('maps a file range onto LUN ranges across extents', () => {
    assert.deepEqual(lunRanges(map, 3 << 20, 2 << 20), [
      { logical: 3 << 20, physical: 103 << 20, length: 1 << 20, unwritten: false },
      { logical: 4 << 20, physical: 300 << 20, length: 1 << 20, unwritten: true },
    ]);
    assert.deepEqual(lunRanges(map, 11 << 20, 1 << 20), [{ logical: 11 << 20, physical: 501 << 20, length: 1 << 20, unwritten: false }]);
  });
  it('has no mapping where a byte is not allocated (a hole: thin)', () => {
    assert.equal(lunRanges(map, 7 << 20, 2 << 20), undefined);
    assert.equal(lunRanges(map, 0, 12 << 20), undefined);
    assert.equal(lunRanges(map, 11 << 20, 2 << 20), undefined, 'past the last extent');
  });
});

describe('proxy config', () => {
  const base = { temporal: { address: 'x:1' }, repository: { path: '/r' } };
  it('takes sanLuns and refuses the old sanMounts, naming its replacement', () => {
    const cfg = parseConfig({ ...base, proxies: [{ name: 'p', transports: ['direct-san'], sanLuns: { ds1: '/dev/sdb' } }] }, 't', '/');
    assert.equal(cfg.proxies[0].sanLuns?.ds1, '/dev/sdb');
    assert.throws(
      () => parseConfig({ ...base, proxies: [{ name: 'p', transports: ['direct-san'], sanMounts: { ds1: '/mnt' } }] }, 't', '/'),
      /proxies\[0\]\.sanMounts.*replaced by sanLuns/,
    );
  });
});
