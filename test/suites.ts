/**
 * Which files run where. `npm test` (test/run.ts) runs every test file but the cluster's own, with the
 * qemu boot files in a lane of their own; `npm run test:cluster` (test/cluster.ts) runs the cluster's
 * test and every end-to-end file but the boot files on the Temporal server built from source.
 */

/** The qemu boot files, longest first: they boot guests for minutes and exercise qemu, not Temporal. */
export const BOOT_FILES = ['test/e2e/verify-restore.test.ts', 'test/e2e/azure-boot.test.ts', 'test/e2e/boot.test.ts'];

/** The Temporal cluster's own test (build, schema, search attributes, a restore on it): test:cluster runs it. */
export const CLUSTER_TEST = 'test/integration/temporal-cluster.test.ts';
