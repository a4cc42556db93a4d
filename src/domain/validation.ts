import { FailureType, RestoreError } from './errors';

/** vSphere display names: 1-80 characters, no path separators, wildcards or control characters. */
export function validateVSphereVmName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new RestoreError(FailureType.InvalidRequest, 'VM name is required');
  }
  if (name.length > 80) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `VM name '${name.slice(0, 20)}…' is ${name.length} characters; vSphere allows at most 80`,
    );
  }
  // eslint-disable-next-line no-control-regex
  const bad = /[\\/%*?"<>|\x00-\x1f]/.exec(name);
  if (bad) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `VM name '${name}' contains '${bad[0] === '\t' ? '\\t' : bad[0]}', which is not allowed (no / \\ % * ? " < > | or control characters)`,
    );
  }
  if (name.trim() !== name) {
    throw new RestoreError(FailureType.InvalidRequest, `VM name '${name}' must not start or end with spaces`);
  }
}

/**
 * ARM virtual machine names: 1-64 characters (Windows: 1-15, the computer name), letters, digits,
 * '-', '_' and '.', not starting with '_' nor ending with '.' or '-'; Windows names have no '.' or '_'
 * and are not all digits.
 */
export function validateAzureVmName(name: unknown, osType: 'Windows' | 'Linux'): asserts name is string {
  const fail = (why: string): never => {
    throw new RestoreError(FailureType.InvalidRequest, `Azure VM name '${String(name)}' is invalid: ${why}`);
  };
  if (typeof name !== 'string' || name.length === 0) fail('a name is required');
  const n = name as string;
  const max = osType === 'Windows' ? 15 : 64;
  if (n.length > max) fail(`${n.length} characters; ${osType} VMs allow at most ${max}`);
  if (!/^[A-Za-z0-9._-]+$/.test(n)) fail("only letters, digits, '-', '_' and '.' are allowed");
  if (n.startsWith('_')) fail("it must not start with '_'");
  if (/[.-]$/.test(n)) fail("it must not end with '.' or '-'");
  if (osType === 'Windows') {
    if (/[._]/.test(n)) fail("Windows computer names cannot contain '.' or '_'");
    if (/^\d+$/.test(n)) fail('Windows computer names cannot be all digits');
  }
}
