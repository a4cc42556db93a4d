import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import { applyEnvOverrides } from './env';
import { bad, parseConfig } from './parse';
import type { AppConfig, VSphereProfile } from './schema';

/** Path of the config file: VMRESTORE_CONFIG, else ./vmrestore.config.json when present. */
export function configFilePath(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.VMRESTORE_CONFIG) {
    if (!existsSync(env.VMRESTORE_CONFIG)) bad('VMRESTORE_CONFIG', `file '${env.VMRESTORE_CONFIG}' does not exist`);
    return path.resolve(env.VMRESTORE_CONFIG);
  }
  const local = path.resolve('vmrestore.config.json');
  return existsSync(local) ? local : undefined;
}

export function loadConfigFile(file: string, opts: { fromLab?: boolean } = {}): AppConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    bad('(file)', `cannot read ${file}: ${(err as Error).message}`);
  }
  return parseConfig(raw, file, path.dirname(file), opts);
}

/** The embedded lab's state folder: VMRESTORE_LAB_DIR, else `.lab` in the checkout (git-ignored). */
export function labStateDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(env.VMRESTORE_LAB_DIR ?? path.join(__dirname, '..', '..', '.lab'));
}

/** Where `vmrestore lab up` writes the lab's configuration; read when no other config file is given. */
export function labConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(labStateDir(env), 'vmrestore.config.json');
}

/** The config file (plus env overrides) when one is given, else the one the running lab wrote. */
export function loadAppConfig(env: NodeJS.ProcessEnv = process.env): AppConfig {
  const file = configFilePath(env);
  if (file) return applyEnvOverrides(loadConfigFile(file), env);
  const lab = labConfigPath(env);
  if (!existsSync(lab)) {
    throw new RestoreError(
      FailureType.Configuration,
      'no vmrestore.config.json (or VMRESTORE_CONFIG) and the local lab is not running: run `vmrestore lab up`, or write a config file (see README "Configuration")',
    );
  }
  return applyEnvOverrides(loadConfigFile(lab, { fromLab: true }), env);
}

/** Resolves a profile's password inside the process that needs it; it never travels in payloads. */
export function resolvePassword(profileName: string, profile: VSphereProfile, env: NodeJS.ProcessEnv = process.env): string {
  if (profile.passwordEnv) {
    const v = env[profile.passwordEnv];
    if (!v) bad(`vsphere.profiles.${profileName}.passwordEnv`, `environment variable ${profile.passwordEnv} is not set`);
    return v;
  }
  if (profile.passwordFile) {
    try {
      return readFileSync(profile.passwordFile, 'utf8').trim();
    } catch {
      bad(`vsphere.profiles.${profileName}.passwordFile`, `cannot read '${profile.passwordFile}'`);
    }
  }
  bad(`vsphere.profiles.${profileName}`, 'needs passwordEnv or passwordFile');
}
