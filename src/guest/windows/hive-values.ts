import { FailureType, RestoreError } from '../../domain/errors';
import { run } from '../exec';
import { HiveReader, splitKeyPath } from './hive-reader';
import { type HiveValueData, HIVEXSH_MAX_LINE, HIVEXSH_MAX_VALUES, type RawHiveValue, RegType } from './hive-types';

// Value encoding, and the hivexsh script lines that carry values and key paths.

export function utf16z(s: string): Buffer {
  return Buffer.from(`${s}\0`, 'utf16le');
}

export function encodeValue(v: HiveValueData): { regType: number; data: Buffer } {
  switch (v.type) {
    case 'string':
      return { regType: RegType.String, data: utf16z(v.value) };
    case 'expandString':
      return { regType: RegType.ExpandString, data: utf16z(v.value) };
    case 'multiString':
      return { regType: RegType.MultiString, data: Buffer.from(`${v.value.map((s) => `${s}\0`).join('')}\0`, 'utf16le') };
    case 'dword': {
      const b = Buffer.alloc(4);
      b.writeUInt32LE(v.value >>> 0);
      return { regType: RegType.Dword, data: b };
    }
    case 'qword': {
      const b = Buffer.alloc(8);
      b.writeBigUInt64LE(BigInt.asUintN(64, v.value));
      return { regType: RegType.Qword, data: b };
    }
    case 'binary':
      return { regType: RegType.Binary, data: v.value };
    case 'raw':
      return { regType: v.regType, data: v.value };
  }
}

/** Decodes raw registry data into the friendliest HiveValueData that re-encodes to the same bytes. */
export function decodeValue(regType: number, data: Buffer): HiveValueData {
  if (regType === RegType.Dword && data.length === 4) return { type: 'dword', value: data.readUInt32LE(0) };
  if (regType === RegType.Qword && data.length === 8) return { type: 'qword', value: data.readBigUInt64LE(0) };
  if (regType === RegType.Binary) return { type: 'binary', value: data };
  if ((regType === RegType.String || regType === RegType.ExpandString) && data.length % 2 === 0) {
    const s = data.toString('utf16le');
    if (s.endsWith('\0') && !s.slice(0, -1).includes('\0')) {
      return { type: regType === RegType.String ? 'string' : 'expandString', value: s.slice(0, -1) };
    }
  }
  if (regType === RegType.MultiString && data.length % 2 === 0) {
    const s = data.toString('utf16le');
    if (s.endsWith('\0\0') || s === '\0') {
      const list = s === '\0' ? [] : s.slice(0, -2).split('\0');
      if (encodeValue({ type: 'multiString', value: list }).data.equals(data)) return { type: 'multiString', value: list };
    }
  }
  return { type: 'raw', regType, value: data };
}

/** The value as text, the way change records show it: dwords in decimal, strings as is. */
export function hiveValueText(v: HiveValueData): string {
  switch (v.type) {
    case 'string':
    case 'expandString':
      return v.value;
    case 'multiString':
      return v.value.join('\n');
    case 'dword':
      return String(v.value);
    case 'qword':
      return v.value.toString();
    case 'binary':
    case 'raw':
      return v.value.toString('hex');
  }
}

/** The `value>` line of a hivexsh setval block. */
function setvalLine(regType: number, data: Buffer): string {
  if (regType === RegType.Dword && data.length === 4) return `dword:0x${data.readUInt32LE(0).toString(16)}`;
  if ((regType === RegType.String || regType === RegType.ExpandString) && data.length >= 2 && data.length % 2 === 0) {
    const s = data.toString('utf16le');
    // hivexsh's string: form takes 7-bit text and adds exactly one terminating NUL.
    if (/^[\x20-\x7e]*\0$/.test(s)) return `${regType === RegType.String ? 'string' : 'expandstring'}:${s.slice(0, -1)}`;
  }
  return `hex:${regType}:${data.toString('hex')}`;
}

/** A bounded rendering of a registry name for messages. */
function shown(name: string): string {
  return name.length > 80 ? `${JSON.stringify(name.slice(0, 80))}… (${name.length} characters)` : JSON.stringify(name);
}

/**
 * The key line of a setval block. hivexsh takes it verbatim (no trimming, no comment skipping) and hivex
 * encodes its UTF-8 as Latin-1 or UTF-16; control characters (a newline would end the line early) and
 * text that does not survive UTF-8 (lone surrogates) are refused, and so are names over the line limit.
 */
function hivexshKeyLine(name: string, where: string): string {
  if (name === '') return '@';
  // eslint-disable-next-line no-control-regex
  if (name === '@' || /[\x00-\x1f\x7f-\x9f]/.test(name) || Buffer.from(name, 'utf8').toString('utf8') !== name) {
    throw new RestoreError(
      FailureType.GuestPreparation,
      `registry value name ${shown(name)} in ${where} cannot be written back through hivexsh (control characters or invalid text); refused`,
    );
  }
  return checkLine(name, `value name ${shown(name)} in ${where}`);
}

function checkLine(line: string, what: string): string {
  const bytes = Buffer.byteLength(line);
  if (bytes > HIVEXSH_MAX_LINE) {
    throw new RestoreError(
      FailureType.GuestPreparation,
      `${what} is too large (${bytes} bytes, over hivexsh's ${HIVEXSH_MAX_LINE}-byte line limit) to be written through hivexsh; refused`,
    );
  }
  return line;
}

export function setvalBlock(values: RawHiveValue[], where: string): string[] {
  if (values.length > HIVEXSH_MAX_VALUES) {
    throw new RestoreError(
      FailureType.GuestPreparation,
      `registry key ${where} has ${values.length} values; hivexsh rewrites at most ${HIVEXSH_MAX_VALUES}; refused`,
    );
  }
  const lines = [`setval ${values.length}`];
  for (const v of values) {
    lines.push(hivexshKeyLine(v.name, where));
    lines.push(checkLine(setvalLine(v.regType, v.data), `value ${shown(v.name)} of ${where}`));
  }
  return lines;
}

/** Key names in `cd` and `add` lines: hivexsh trims these lines and skips those starting with `#`. */
function checkKeyName(name: string, keyPath: string): string {
  if (!/^[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?$/.test(name) || name === '.' || name === '..') {
    throw new RestoreError(FailureType.GuestPreparation, `registry key path ${shown(keyPath)} cannot be written with hivexsh; refused`);
  }
  return name;
}

export function cdLine(keyPath: string): string {
  const parts = splitKeyPath(keyPath).map((p) => checkKeyName(p, keyPath));
  // `cd \` plus a trailing element list; the root alone needs the backslash followed by nothing.
  return checkLine(`cd \\${parts.join('\\')}`, `registry key path ${shown(keyPath)}`);
}

/** hivexsh creates ~/.hivexsh (readline history) even when scripted; without HOME it leaves no trace. */
export const NO_HISTORY = { HOME: undefined };

export async function runHivexsh(hivePath: string, script: string[]): Promise<void> {
  script.push('commit', 'quit');
  for (const line of script) {
    // eslint-disable-next-line no-control-regex
    if (/[\x00\n\r]/.test(line)) throw new RestoreError(FailureType.GuestPreparation, `unsafe hivexsh input line ${shown(line)}; refused`);
    checkLine(line, `hivexsh input line ${shown(line)}`);
  }
  await run('hivexsh', ['-w', hivePath], {
    input: `${script.join('\n')}\n`,
    timeoutMs: 120_000,
    env: NO_HISTORY,
  });
}

/**
 * Lines that create `keyPath` (and missing parents) given the keys known to exist; updates `known`.
 * `known` holds upper-cased paths.
 */
export function addKeyLines(keyPath: string, known: Set<string>, reader: HiveReader | null): string[] {
  const parts = splitKeyPath(keyPath);
  const lines: string[] = [];
  for (let i = 0; i < parts.length; i++) {
    const sub = parts.slice(0, i + 1).join('\\');
    const upper = sub.toUpperCase();
    if (known.has(upper)) continue;
    if (reader?.keyExists(sub)) {
      known.add(upper);
      continue;
    }
    lines.push(
      cdLine(parts.slice(0, i).join('\\')),
      checkLine(`add ${checkKeyName(parts[i]!, keyPath)}`, `registry key ${shown(keyPath)}`),
    );
    known.add(upper);
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------------
