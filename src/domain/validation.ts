import { FailureType, RestoreError } from './errors';

/** vSphere display names: 1-80 characters, no path separators, wildcards or control characters. */
export function validateVSphereVmName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || name.length === 0) {
    throw new RestoreError(FailureType.InvalidRequest, 'VM name is required');
  }
  if (name.length > 80) {
    throw new RestoreError(FailureType.InvalidRequest, `VM name '${name.slice(0, 20)}…' is ${name.length} characters; vSphere allows at most 80`);
  }
  // eslint-disable-next-line no-control-regex
  const bad = /[\\/%*?"<>|\x00-\x1f]/.exec(name);
  if (bad) {
    throw new RestoreError(FailureType.InvalidRequest, `VM name '${name}' contains '${bad[0] === '\t' ? '\\t' : bad[0]}', which is not allowed (no / \\ % * ? " < > | or control characters)`);
  }
  if (name.trim() !== name) {
    throw new RestoreError(FailureType.InvalidRequest, `VM name '${name}' must not start or end with spaces`);
  }
}
