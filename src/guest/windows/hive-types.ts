// Registry value types and hive limits shared by the hive generator, parser and editor.

export const RegType = {
  None: 0,
  String: 1,
  ExpandString: 2,
  Binary: 3,
  Dword: 4,
  DwordBigEndian: 5,
  Link: 6,
  MultiString: 7,
  ResourceList: 8,
  FullResourceDescriptor: 9,
  ResourceRequirementsList: 10,
  Qword: 11,
} as const;

export type HiveValueData =
  | { type: 'string'; value: string }
  | { type: 'expandString'; value: string }
  | { type: 'multiString'; value: string[] }
  | { type: 'dword'; value: number }
  | { type: 'qword'; value: bigint }
  | { type: 'binary'; value: Buffer }
  /** Any registry type kept byte-exact (also what the parser returns, so edits never re-encode). */
  | { type: 'raw'; regType: number; value: Buffer };

export interface HiveKeySpec {
  /** Backslash-separated path below the root, e.g. `ControlSet001\Services\Dhcp`. Missing parents are created. */
  path: string;
  /** Value name → data; the empty name is the key's default value. */
  values?: Record<string, HiveValueData>;
}

export interface HiveEdit {
  keyPath: string;
  name: string;
  /** null deletes the value. */
  value: HiveValueData | null;
}

export interface RawHiveValue {
  name: string;
  regType: number;
  data: Buffer;
}

/**
 * hivexsh reads scripted input with fgets into an 8192-byte buffer: a longer line is split and its
 * remainder read as the next line, which can shift a setval block so that guest data (a value name)
 * lands where a command is expected (`commit <path>` writes the hive anywhere). Every line we emit is
 * checked against this limit in bytes and refused, never truncated.
 */
export const HIVEXSH_MAX_LINE = 8000;
/** hivexsh's setval takes at most this many values. */
export const HIVEXSH_MAX_VALUES = 1000;
/** Hives are read whole; a real SOFTWARE hive is well under this. */
export const MAX_HIVE_BYTES = 512 * 1024 * 1024;
