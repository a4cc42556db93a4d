import { DefaultFailureConverter } from '@temporalio/common';

/**
 * With payload encryption on, failure messages and stack traces travel as an encoded attribute that the
 * payload codec seals like any other payload; the server keeps only "Encoded failure". Loaded by path
 * (`failureConverterPath`), since workflow code runs in the worker's sandbox, and by clients alike.
 */
export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
