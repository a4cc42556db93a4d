/**
 * Something a vSphere lookup named does not exist: a datacenter, datastore, network, folder, pool, host,
 * VM or datastore file. The message names it, where it was looked for and what exists instead; the
 * activities turn it into the domain's NotFound failure (src/activities/failures.ts).
 */
export class VSphereNotFoundError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'VSphereNotFoundError';
  }
}
