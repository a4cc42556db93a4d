/** Secrets the simulator keeps in its state directory: the admin token and the token-signing key. */
import fs from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';

/** The admin token kept with the simulator's state, created on first start. */
export function adminTokenFromState(stateDir: string): { token: string; file: string } {
  const file = path.join(stateDir, 'admin-token');
  try {
    return { token: fs.readFileSync(file, 'utf8').trim(), file };
  } catch {
    fs.mkdirSync(stateDir, { recursive: true });
    const token = randomBytes(24).toString('base64url');
    fs.writeFileSync(file, token, { mode: 0o600 });
    return { token, file };
  }
}

/** The HMAC key for issued tokens, kept with the simulator's state so tokens survive a restart. */
export function signingKey(stateDir: string): Buffer {
  const file = path.join(stateDir, 'token-signing.key');
  try {
    return fs.readFileSync(file);
  } catch {
    fs.mkdirSync(stateDir, { recursive: true });
    const key = randomBytes(32);
    fs.writeFileSync(file, key, { mode: 0o600 });
    return key;
  }
}
