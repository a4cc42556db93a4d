import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../exec';
import { MAX_HIVE_BYTES, RegType, type HiveEdit, type HiveKeySpec, type HiveValueData, type RawHiveValue } from './hive-types';
import { buildEmptyHive, type EmptyHiveOptions } from './hive-build';
import { HiveReader, splitKeyPath } from './hive-reader';
import { addKeyLines, cdLine, decodeValue, encodeValue, NO_HISTORY, runHivexsh, setvalBlock, utf16z } from './hive-values';

/**
 * Windows registry hive files (regf): a minimal hive generator, a small read-only parser, and edits
 * through hivex's `hivexsh`/`hivexget`.
 *
 * hivex can open and grow a hive but not create one, and no Debian tool writes an empty hive, so
 * `buildEmptyHive` lays out the smallest hive Windows and hivex accept: a 4 KiB base block and one
 * 4 KiB hbin holding the root key and its security cell. Layout per the publicly documented format
 * (libyal "Windows NT Registry File (REGF) format"; hivex lib/hivex-internal.h).
 *
 * `hivexsh setval` replaces every value of a key, so single-value edits read the key's current values
 * byte-exact with the parser below and write them all back.
 */

export { buildEmptyHive, defaultKeySecurityDescriptor, toFileTime, type EmptyHiveOptions } from './hive-build';
export { HiveReader, splitKeyPath } from './hive-reader';
export { decodeValue, encodeValue, hiveValueText } from './hive-values';

export * from './hive-types';

// Public file-level API

/** Writes a new hive at `path` holding `keys` (and their parents) with their values. */
export async function createHive(path: string, keys: HiveKeySpec[], opts: EmptyHiveOptions = {}): Promise<void> {
  await writeFile(path, buildEmptyHive(opts));
  if (keys.length === 0) return;
  const known = new Set<string>();
  const script: string[] = [];
  for (const key of keys) {
    script.push(...addKeyLines(key.path, known, null));
    const values = Object.entries(key.values ?? {}).map(([name, v]) => ({ name, ...encodeValue(v) }));
    if (values.length > 0) {
      script.push(
        cdLine(key.path),
        ...setvalBlock(
          values.map((v) => ({ name: v.name, regType: v.regType, data: v.data })),
          key.path,
        ),
      );
    }
  }
  await runHivexsh(path, script);
}

/**
 * Sets or deletes values, creating missing keys, in one hivexsh run. Untouched values of an edited key
 * are written back byte-exact. Returns false (and leaves the file alone) when every edit was a no-op.
 */
export async function setHiveValues(path: string, edits: HiveEdit[]): Promise<boolean> {
  const reader = await HiveReader.open(path);
  const byKey = new Map<string, { keyPath: string; edits: HiveEdit[] }>();
  for (const e of edits) {
    const k = splitKeyPath(e.keyPath).join('\\').toUpperCase();
    const entry = byKey.get(k) ?? { keyPath: e.keyPath, edits: [] };
    entry.edits.push(e);
    byKey.set(k, entry);
  }
  const known = new Set<string>();
  const script: string[] = [];
  for (const { keyPath, edits: keyEdits } of byKey.values()) {
    const current = reader.values(keyPath);
    const values: RawHiveValue[] = current ? [...current] : [];
    let changed = current === null;
    for (const e of keyEdits) {
      const idx = values.findIndex((v) => v.name.toUpperCase() === e.name.toUpperCase());
      if (e.value === null) {
        if (idx >= 0) {
          values.splice(idx, 1);
          changed = true;
        }
        continue;
      }
      const enc = encodeValue(e.value);
      const next = { name: idx >= 0 ? values[idx]!.name : e.name, regType: enc.regType, data: enc.data };
      if (idx >= 0) {
        const prev = values[idx]!;
        if (prev.regType === next.regType && prev.data.equals(next.data)) continue;
        values[idx] = next;
      } else {
        values.push(next);
      }
      changed = true;
    }
    if (!changed) continue;
    if (current === null && values.length === 0 && keyEdits.every((e) => e.value === null)) continue;
    script.push(...addKeyLines(keyPath, known, reader));
    script.push(cdLine(keyPath), ...setvalBlock(values, keyPath || '<root>'));
  }
  if (script.length === 0) return false;
  await runHivexsh(path, script);
  return true;
}

/**
 * Reads one value through `hivexget` (which prints a key's values in hivexsh's regedit-like format),
 * or null when the key or value is missing.
 */
export async function getHiveValue(path: string, keyPath: string, valueName: string): Promise<HiveValueData | null> {
  const r = await run('hivexget', [path, `\\${splitKeyPath(keyPath).join('\\')}`], {
    allowExit: [1],
    env: NO_HISTORY,
    timeoutMs: 120_000,
  });
  if (r.code !== 0) {
    if (/not found/i.test(r.stderr)) return null;
    throw new RestoreError(FailureType.GuestPreparation, `hivexget ${path} ${keyPath} failed: ${r.stderr.trim()}`);
  }
  for (const line of r.stdout.split('\n')) {
    const parsed = parseLsvalLine(line);
    if (parsed && parsed.name.toUpperCase() === valueName.toUpperCase()) return parsed.value;
  }
  return null;
}

/** Parses one line of `hivexsh lsval` output: `"name"=dword:00000001`, `"name"="text"`, `"name"=hex(3):00,01`. */
export function parseLsvalLine(line: string): { name: string; value: HiveValueData } | null {
  if (!line.startsWith('"')) return null;
  let i = 1;
  let name = '';
  for (; i < line.length && line[i] !== '"'; i++) {
    if (line[i] === '\\' && i + 1 < line.length) i++;
    name += line[i];
  }
  if (line[i + 1] !== '=') return null;
  if (name === '@') name = '';
  const rest = line.slice(i + 2);
  const unquote = (q: string) => q.slice(1, -1).replace(/\\(["\\])/g, '$1');
  if (rest.startsWith('dword:')) return { name, value: { type: 'dword', value: parseInt(rest.slice(6), 16) >>> 0 } };
  if (rest.startsWith('"')) return { name, value: { type: 'string', value: unquote(rest) } };
  const str = /^str\((\d+)\):(".*")$/.exec(rest);
  if (str) {
    const t = Number(str[1]);
    const value = unquote(str[2]!);
    return {
      name,
      value: t === RegType.ExpandString ? { type: 'expandString', value } : { type: 'raw', regType: t, value: utf16z(value) },
    };
  }
  const hex = /^hex\((\d+)\):([0-9a-f,]*)$/i.exec(rest);
  if (hex) return { name, value: decodeValue(Number(hex[1]), Buffer.from(hex[2]!.replace(/,/g, ''), 'hex')) };
  return null;
}

/**
 * Runs hivexml over the hive; resolves with the XML and rejects when hivex cannot parse the hive.
 * hivexml opens /dev/stdout by name, which fails on the socket pipes Node gives children, so its
 * output goes through a temporary file.
 */
export async function hiveToXml(path: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'hivexml-'));
  try {
    const out = join(dir, 'hive.xml');
    await run('hivexml', [path], { stdoutFile: out, maxStdoutBytes: 4 * MAX_HIVE_BYTES, timeoutMs: 120_000 });
    return await readFile(out, 'utf8');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
