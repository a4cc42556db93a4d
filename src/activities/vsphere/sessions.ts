import type { AppConfig } from '../../config';
import { assertProfileTransport, resolvePassword } from '../../config';
import { FailureType, RestoreError } from '../../domain/errors';
import { VSphereClient } from '../../vsphere';

/** One logged-in session per connection profile, shared by the worker's activities. */
export class VSphereSessions {
  private readonly sessions = new Map<string, Promise<VSphereClient>>();
  constructor(private readonly config: AppConfig) {}

  profileName(requested?: string): string {
    const name = requested ?? this.config.vsphere.defaultProfile;
    if (!this.config.vsphere.profiles[name]) {
      const known = Object.keys(this.config.vsphere.profiles);
      throw new RestoreError(
        FailureType.InvalidRequest,
        `vSphere connection profile '${name}' is not configured (known: ${known.join(', ') || 'none'})`,
      );
    }
    return name;
  }

  async get(requested?: string): Promise<VSphereClient> {
    const name = this.profileName(requested);
    let session = this.sessions.get(name);
    if (session === undefined) {
      const profile = this.config.vsphere.profiles[name];
      assertProfileTransport(name, profile);
      session = VSphereClient.connect({
        url: profile.url,
        username: profile.username,
        password: resolvePassword(name, profile),
        insecure: profile.insecure,
        thumbprint: profile.thumbprint,
      });
      this.sessions.set(name, session);
      session.catch(() => this.sessions.delete(name));
    }
    const client: VSphereClient = await session;
    if (!(await client.isSessionActive().catch(() => false))) {
      this.sessions.delete(name);
      return this.get(requested);
    }
    return client;
  }

  async closeAll(): Promise<void> {
    const all = [...this.sessions.values()];
    this.sessions.clear();
    await Promise.all(all.map(async (s) => (await s.catch(() => undefined))?.logout().catch(() => undefined)));
  }
}
