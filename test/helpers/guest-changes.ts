/**
 * Reads a restore's reported guest changes back from the prepared disk itself: the change list is the
 * restore's own account, so each entry is held against what the disk holds now.
 */
import assert from 'node:assert/strict';
import { Ext4Volume } from '../../src/guest/linux/ext4';
import { readHiveValuesFromDisk, readWindowsFileFromDisk } from '../../src/guest/windows/prep';
import { sha256Of, type GuestChange } from '../../src/guest/types';
import type { WindowsHive } from '../../src/guest/windows/prep';

/** The last change reported for each path: a path changed twice ends in the second state. */
function finalChanges(changes: GuestChange[], isGuestPath: (p: string) => boolean): GuestChange[] {
  const last = new Map<string, GuestChange>();
  for (const c of changes) if (isGuestPath(c.path)) last.set(c.path, c);
  return [...last.values()];
}

/**
 * Every file, symlink and removal the restore reported under `/` is found in that state on one of the
 * disk's ext4 volumes (the root first): a file's bytes hash to its sha256After, a symlink points where
 * reported, a removed path is gone. Returns the paths checked.
 */
export async function assertLinuxChangesOnDisk(imagePath: string, volumeOffsets: number[], changes: GuestChange[]): Promise<string[]> {
  const checked = finalChanges(changes, (p) => p.startsWith('/') && !p.endsWith('/'));
  assert.ok(checked.length > 0, 'the restore reported guest file changes');
  const volumes = volumeOffsets.map((o) => new Ext4Volume(imagePath, o));
  const stats = await Promise.all(volumes.map((v) => v.statMany(checked.map((c) => c.path))));
  const contents = await Promise.all(volumes.map((v) => v.readMany(checked.map((c) => c.path))));
  for (const c of checked) {
    const found = volumes.map((_, i) => {
      const st = stats[i].get(c.path) ?? null;
      if (!st) return null;
      if (st.type === 'symlink') return sha256Of(`-> ${st.linkTarget ?? '?'}`);
      return sha256Of(contents[i].get(c.path) ?? null);
    });
    if (c.sha256After === null) {
      assert.ok(
        found.every((h) => h === null),
        `${c.path} was reported removed but is on the disk`,
      );
    } else {
      assert.ok(
        found.includes(c.sha256After),
        `${c.path}: reported ${c.sha256After}, the disk holds ${found.join(' / ')} (${c.description})`,
      );
    }
  }
  return checked.map((c) => c.path);
}

/**
 * Every file and registry value a Windows restore reported is on the disk as reported: files by their
 * digest, registry values (`HKLM\<hive>\<key>\<name>`) by the new text the change's diff shows.
 */
export async function assertWindowsChangesOnDisk(imagePath: string, changes: GuestChange[]): Promise<string[]> {
  const registry = finalChanges(changes, (p) => p.startsWith('HKLM\\'));
  // Files of the Windows volume (`C:\Windows\...`); boot files on other partitions are read by their own tests.
  const files = finalChanges(changes, (p) => /^[A-Za-z]:\\.*[^\\]$/.test(p));
  assert.ok(registry.length > 0, 'the restore reported registry changes');
  const queries = registry.map((c) => {
    const [, hive, ...rest] = c.path.split('\\');
    return { hive: hive as WindowsHive, keyPath: rest.slice(0, -1).join('\\'), valueName: rest[rest.length - 1] };
  });
  const values = await readHiveValuesFromDisk(imagePath, queries);
  registry.forEach((c, i) => {
    const added = c.diff.filter((l) => l.startsWith('+ ')).map((l) => l.slice(2));
    assert.notEqual(values[i], null, `${c.path} was reported set but is missing`);
    // The diff keeps short values whole (a long one is cut); those are compared as text.
    if (added.length === 1 && !added[0].endsWith('…')) assert.equal(values[i], added[0], `${c.path} on the disk`);
  });
  for (const c of files) {
    const guestPath = c.path
      .replace(/^[A-Za-z]:/, '')
      .replace(/\\/g, '/')
      .replace(/^\//, '');
    const bytes = await readWindowsFileFromDisk(imagePath, guestPath);
    assert.equal(sha256Of(bytes), c.sha256After, `${c.path} on the disk`);
  }
  return [...registry, ...files].map((c) => c.path);
}
