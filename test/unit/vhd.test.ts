import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { RestoreError } from '../../src/domain/errors';
import {
  AZURE_LIMITS,
  assertAzureDiskSize,
  buildFixedVhdFooter,
  footerProblems,
  formatUuid,
  parseVhdFooter,
  uuidFromRestoreId,
  vhdBlobSize,
  vhdGeometry,
  vhdVirtualSize,
} from '../../src/azure/vhd';
import { GiB, MiB, TiB } from '../../src/domain/units';

describe('vhdVirtualSize', () => {
  it('rounds up to a whole MiB', () => {
    assert.equal(vhdVirtualSize(0), 0);
    assert.equal(vhdVirtualSize(1), MiB);
    assert.equal(vhdVirtualSize(MiB), MiB);
    assert.equal(vhdVirtualSize(20 * MiB + 3 * 512), 21 * MiB);
    assert.equal(vhdVirtualSize(10 * GiB - 512), 10 * GiB);
    assert.equal(vhdBlobSize(20 * MiB), 20 * MiB + 512);
  });
  it('rejects negative and fractional sizes', () => {
    assert.throws(() => vhdVirtualSize(-1), RestoreError);
    assert.throws(() => vhdVirtualSize(1.5), RestoreError);
  });
});

describe('buildFixedVhdFooter / parseVhdFooter', () => {
  const uuid = uuidFromRestoreId('restore-123');
  const ts = new Date('2024-05-06T07:08:09Z');
  const footer = buildFixedVhdFooter({ currentSize: 21 * MiB, uuid, timestamp: ts });

  it('lays out every field at its spec offset', () => {
    assert.equal(footer.length, 512);
    assert.equal(footer.toString('ascii', 0, 8), 'conectix');
    assert.equal(footer.readUInt32BE(8), 2);
    assert.equal(footer.readUInt32BE(12), 0x00010000);
    assert.equal(footer.readBigUInt64BE(16), 0xffffffffffffffffn);
    assert.equal(footer.readUInt32BE(24), Math.floor((ts.getTime() - Date.UTC(2000, 0, 1)) / 1000));
    assert.equal(footer.toString('ascii', 28, 32), 'vmrs');
    assert.equal(footer.toString('ascii', 36, 40), 'Wi2k');
    assert.equal(footer.readBigUInt64BE(40), BigInt(21 * MiB));
    assert.equal(footer.readBigUInt64BE(48), BigInt(21 * MiB));
    assert.equal(footer.readUInt32BE(60), 2);
    assert.deepEqual(footer.subarray(68, 84), uuid);
    assert.equal(footer[84], 0);
    assert.ok(footer.subarray(85).equals(Buffer.alloc(427)), 'reserved bytes are zero');
  });

  it("stores the one's-complement byte-sum checksum", () => {
    let sum = 0;
    for (let i = 0; i < 512; i++) if (i < 64 || i >= 68) sum += footer[i];
    assert.equal(footer.readUInt32BE(64), ~sum >>> 0);
  });

  it('parses back, and flags a corrupted byte', () => {
    const f = parseVhdFooter(footer);
    assert.equal(f.cookie, 'conectix');
    assert.equal(f.checksumValid, true);
    assert.equal(f.currentSize, 21 * MiB);
    assert.equal(f.originalSize, 21 * MiB);
    assert.equal(f.diskType, 2);
    assert.equal(f.creatorApp, 'vmrs');
    assert.equal(f.creatorHostOs, 'Wi2k');
    assert.equal(f.timestamp.toISOString(), ts.toISOString());
    assert.deepEqual(f.geometry, vhdGeometry(21 * MiB));
    assert.deepEqual(f.uuid, uuid);
    assert.deepEqual(footerProblems(f, 21 * MiB), []);

    const bad = Buffer.from(footer);
    bad[100] ^= 0x01;
    const g = parseVhdFooter(bad);
    assert.equal(g.checksumValid, false);
    assert.ok(footerProblems(g).some((p) => p.includes('checksum')));
    // A whole fixed VHD can be handed over: the footer is its last 512 bytes.
    assert.equal(parseVhdFooter(Buffer.concat([Buffer.alloc(4096, 7), footer])).checksumValid, true);
  });

  it('is deterministic for a fixed uuid and timestamp', () => {
    const again = buildFixedVhdFooter({ currentSize: 21 * MiB, uuid: uuidFromRestoreId('restore-123'), timestamp: ts });
    assert.ok(again.equals(footer));
  });

  it('rejects sizes that are not whole sectors and bad uuids', () => {
    assert.throws(() => buildFixedVhdFooter({ currentSize: 1000, uuid }), RestoreError);
    assert.throws(() => buildFixedVhdFooter({ currentSize: MiB, uuid: Buffer.alloc(8) }), RestoreError);
  });
});

describe('CHS geometry (VHD spec appendix algorithm)', () => {
  it('matches hand-computed values across the branches', () => {
    // 20 MiB: 40960 sectors, S=17, cth=2409, H=max(4, 3)=4.
    assert.deepEqual(vhdGeometry(20 * MiB), { cylinders: 602, heads: 4, sectorsPerTrack: 17 });
    // 100 MiB: S=17, cth=12047, H=12 and cth < 12*1024.
    assert.deepEqual(vhdGeometry(100 * MiB), { cylinders: 1003, heads: 12, sectorsPerTrack: 17 });
    // 1 GiB: H>16 forces S=31, then cth=67650 >= 16384 forces S=63.
    assert.deepEqual(vhdGeometry(GiB), { cylinders: 2080, heads: 16, sectorsPerTrack: 63 });
    // 127 GiB is over 65535*16*63 sectors: S=255, H=16.
    assert.deepEqual(vhdGeometry(127 * GiB), { cylinders: 65278, heads: 16, sectorsPerTrack: 255 });
    // Anything past 65535*16*255 sectors is capped at the maximum geometry.
    assert.deepEqual(vhdGeometry(2 * TiB), { cylinders: 65535, heads: 16, sectorsPerTrack: 255 });
    // Small disks still get at least 4 heads.
    assert.deepEqual(vhdGeometry(MiB), { cylinders: 30, heads: 4, sectorsPerTrack: 17 });
  });
});

describe('uuidFromRestoreId', () => {
  it('is deterministic, distinct per restore and disk, and v4-shaped', () => {
    const a = uuidFromRestoreId('restore-abc');
    assert.equal(a.length, 16);
    assert.deepEqual(uuidFromRestoreId('restore-abc'), a);
    assert.notDeepEqual(uuidFromRestoreId('restore-abd'), a);
    assert.notDeepEqual(uuidFromRestoreId('restore-abc', 1), a);
    assert.deepEqual(uuidFromRestoreId('restore-abc', 1), uuidFromRestoreId('restore-abc', 1));
    assert.equal(a[6] >> 4, 4, 'version nibble');
    assert.equal(a[8] >> 6, 0b10, 'RFC 4122 variant');
    assert.match(formatUuid(a), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.throws(() => uuidFromRestoreId(''), RestoreError);
  });
});

describe('assertAzureDiskSize', () => {
  const isLimit = (name: string, pattern: RegExp) => (err: unknown) => {
    assert.ok(err instanceof RestoreError);
    assert.equal(err.type, 'AzureLimit');
    assert.equal(err.nonRetryable, true);
    assert.ok(err.message.includes(name), err.message);
    assert.match(err.message, pattern);
    return true;
  };

  it('accepts ordinary disks and returns the VHD sizes', () => {
    assert.deepEqual(assertAzureDiskSize(20 * MiB, { os: false }), { virtualSize: 20 * MiB, vhdSize: 20 * MiB + 512 });
    assert.deepEqual(assertAzureDiskSize(100 * GiB + 1, { os: true }).virtualSize, 100 * GiB + MiB);
  });

  it('refuses disks under the 20 MiB upload minimum', () => {
    assert.throws(() => assertAzureDiskSize(19 * MiB, { os: false, diskName: 'tiny' }), isLimit("'tiny'", /minimum/));
  });

  it('refuses page blobs over 8 TiB but allows them for direct upload up to 32 TiB', () => {
    assert.throws(() => assertAzureDiskSize(8 * TiB, { os: false, diskName: 'big' }), isLimit("'big'", /8 TiB/));
    assert.doesNotThrow(() => assertAzureDiskSize(8 * TiB - MiB, { os: false }));
    assert.doesNotThrow(() => assertAzureDiskSize(8 * TiB, { os: false, target: 'managedDiskUpload' }));
    assert.doesNotThrow(() => assertAzureDiskSize(32 * TiB, { os: false, target: 'managedDiskUpload' }));
    assert.throws(
      () => assertAzureDiskSize(32 * TiB + 1, { os: false, target: 'managedDiskUpload', diskName: 'huge' }),
      isLimit("'huge'", /32 TiB/),
    );
  });

  it('applies the OS disk limits by generation', () => {
    assert.doesNotThrow(() => assertAzureDiskSize(2 * TiB, { os: true }));
    assert.throws(() => assertAzureDiskSize(2 * TiB + 1, { os: true, diskName: 'boot' }), isLimit("'boot'", /Gen1 OS disk/));
    assert.doesNotThrow(() => assertAzureDiskSize(3 * TiB, { os: true, hyperVGeneration: 'V2' }));
    assert.doesNotThrow(() => assertAzureDiskSize(AZURE_LIMITS.osDiskMaxBytesGen2, { os: true, hyperVGeneration: 'V2' }));
    assert.throws(
      () => assertAzureDiskSize(AZURE_LIMITS.osDiskMaxBytesGen2 + 1, { os: true, hyperVGeneration: 'V2', diskName: 'boot' }),
      isLimit("'boot'", /Gen2 OS disk.*4095 GiB/),
    );
    assert.doesNotThrow(() => assertAzureDiskSize(3 * TiB, { os: false }));
  });
});
