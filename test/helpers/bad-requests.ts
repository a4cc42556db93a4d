import fc from 'fast-check';
import { AZURE_REQUEST_FIELDS, VSPHERE_REQUEST_FIELDS } from '../../src/cli/restore-requests';

/** Strings a hostile or careless caller sends: path tricks, control characters, huge and empty values. */
export const hostileString: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('', '.', '..', '../..', 'a/../../b', 'a\\b', 'a\u0000b', 'line\nbreak', '\t', '\u007f', '\u2028', ' lead', 'trail '),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.string({ minLength: 300, maxLength: 1200 }),
);

/** Any JSON value a request can carry through Temporal, biased towards hostile strings. */
export const hostileJson: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 2, arbitrary: hostileString },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 2 }) },
  { weight: 1, arbitrary: fc.constantFrom(null, true, false, 0, -1, 1e308, -1e-9, 2 ** 53, [], {}, [''], { '': '' }) },
);

/** JSON values that are never a valid value of `field` in a restore request. */
function invalidFor(field: string): fc.Arbitrary<unknown> {
  const notString = fc.oneof(fc.integer(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 2 }), fc.constant({}));
  const badText = fc.oneof(
    notString,
    fc.constantFrom('', 'a\u0000b', 'x\ny', '\u001b[31m'),
    fc.string({ minLength: 1100, maxLength: 1300 }),
  );
  switch (field) {
    case 'vmName':
      return fc.oneof(badText, fc.constantFrom('.', '..', 'a/b', 'x'.repeat(81)));
    case 'restorePointId':
      return fc.oneof(badText, fc.constantFrom('../rp', 'rp/x', 'rp x'));
    case 'transport':
    case 'diskFormat':
      return fc.oneof(notString, fc.constantFrom('fast', 'NBD', ''));
    case 'generation':
      return fc.oneof(fc.constantFrom(0, 3, '2', 1.5, null, true));
    case 'powerOn':
    case 'keepOnFailure':
    case 'verify':
    case 'keepOnVerifyFailure':
    case 'skipGuestPreparation':
      return fc.oneof(fc.constantFrom('true', 1, 0, null, [], {}));
    case 'verifyTimeoutSeconds':
      return fc.oneof(fc.constantFrom(0, 9, 3601, 60.5, -60, '60', null, true, []));
    case 'verifyNetwork':
      return fc.oneof(
        fc.constantFrom('10.0.0.5', 5, [], null),
        fc.constant({}),
        fc.constant({ address: '10.0.0.300' }),
        fc.constant({ address: '10.0.0.5', prefixLength: 31 }),
        fc.constant({ address: '10.0.0.5', gateway: 'gw' }),
      );
    case 'throttleMBps':
      return fc.oneof(fc.constantFrom(-1, 1e9, '10', null, true, []));
    case 'proxyWaitSeconds':
      return fc.oneof(fc.constantFrom(0, -1, 1.5, 1e9, '60', null, true));
    case 'diskConcurrency':
      return fc.oneof(fc.constantFrom(0, -3, 1.5, 65, 1e6, '2', null));
    case 'networkMap':
      return fc.oneof(fc.constantFrom('VM Network', 5, [], null), fc.constant({ 'VM Network': 7 }), fc.constant({ 'VM Network': '' }));
    case 'resourceGroup':
      return fc.oneof(badText, fc.constantFrom('rg.', 'rg/x', 'a'.repeat(91)));
    case 'location':
      return fc.oneof(badText, fc.constantFrom('west/europe', 'x'.repeat(65)));
    case 'vmSize':
      return fc.oneof(badText, fc.constantFrom('Standard D2', 'size/1'));
    default:
      return badText;
  }
}

/** Every field a vSphere request may carry (the CLI's and plan files' list). */
export const VSPHERE_FIELDS = VSPHERE_REQUEST_FIELDS;

/** Every field an Azure request may carry. */
export const AZURE_FIELDS = AZURE_REQUEST_FIELDS;

/** A valid request with one field replaced by a value that is never valid for it. */
export function badRequest(
  base: Record<string, unknown>,
  fields: readonly string[],
): fc.Arbitrary<{ field: string; request: Record<string, unknown> }> {
  return fc.constantFrom(...fields).chain((field) => invalidFor(field).map((value) => ({ field, request: { ...base, [field]: value } })));
}

/** A valid request with one field replaced by any JSON value (which may happen to be valid). */
export function anyFieldValue(
  base: Record<string, unknown>,
  fields: readonly string[],
): fc.Arbitrary<{ field: string; request: Record<string, unknown> }> {
  return fc
    .record({ field: fc.constantFrom(...fields), value: hostileJson })
    .map(({ field, value }) => ({ field, request: { ...base, [field]: value } }));
}
