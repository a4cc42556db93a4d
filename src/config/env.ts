import path from 'node:path';
import { bad } from './parse';
import type { AppConfig } from './schema';

/** Environment overrides, applied after the file: each names one key. */
export function applyEnvOverrides(cfg: AppConfig, env: NodeJS.ProcessEnv = process.env): AppConfig {
  const out = { ...(cfg.fromLab ? applyLabEnvOverrides(cfg, env) : cfg), temporal: { ...cfg.temporal }, repository: { ...cfg.repository } };
  if (env.VMRESTORE_TEMPORAL_ADDRESS) out.temporal.address = env.VMRESTORE_TEMPORAL_ADDRESS;
  if (env.VMRESTORE_TEMPORAL_NAMESPACE) out.temporal.namespace = env.VMRESTORE_TEMPORAL_NAMESPACE;
  if (env.VMRESTORE_TASK_QUEUE) out.temporal.taskQueue = env.VMRESTORE_TASK_QUEUE;
  if (env.VMRESTORE_REPOSITORY) out.repository.path = path.resolve(env.VMRESTORE_REPOSITORY);
  if (env.VMRESTORE_ENCRYPTION_KEY_FILE) {
    // One key from a file, under VMRESTORE_ENCRYPTION_KEY_ID; configured keys stay available for decrypting.
    const keyId = env.VMRESTORE_ENCRYPTION_KEY_ID || 'default';
    const keys = { ...out.temporal.encryption?.keys, [keyId]: { keyFile: path.resolve(env.VMRESTORE_ENCRYPTION_KEY_FILE) } };
    out.temporal.encryption = { keyId, keys };
  }
  const agent = env.VMRESTORE_AZURE_WINDOWS_AGENT_INSTALLER;
  if (agent !== undefined && out.azure) {
    // A path configures the installer (its digest unchecked); 'none' configures none.
    const windowsAgentInstaller = agent === 'none' ? undefined : agent ? { path: path.resolve(agent) } : out.azure.windowsAgentInstaller;
    out.azure = { ...out.azure, windowsAgentInstaller };
  }
  if (!/^[^:\s]+:\d+$/.test(out.temporal.address)) {
    bad('VMRESTORE_TEMPORAL_ADDRESS', `expected host:port, got '${out.temporal.address}'`);
  }
  return out;
}

function seconds(env: NodeJS.ProcessEnv, name: string, dflt: number | undefined): number | undefined {
  const v = env[name];
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) bad(name, `expected a whole number of seconds, got '${v}'`);
  return n;
}

/**
 * The lab's own knobs, honoured only for the configuration the lab wrote (tests shorten idle timeouts and
 * run the helper or verifier worker as a separate process with them).
 */
export function applyLabEnvOverrides(cfg: AppConfig, env: NodeJS.ProcessEnv = process.env): AppConfig {
  const out = { ...cfg };
  if (env.VMRESTORE_LAB_VERIFIER_WORKER === 'separate') out.verifier = { embeddedWorker: false };
  // The lab's proxies written by `vmrestore worker --proxy NAME` processes of their own.
  if (env.VMRESTORE_LAB_PROXY_WORKER === 'separate') out.proxies = cfg.proxies.map((p) => ({ ...p, embeddedWorker: false }));
  const a = cfg.azure;
  if (a) {
    out.azure = {
      ...a,
      leaseHolderCheckSeconds: seconds(env, 'VMRESTORE_AZURE_LEASE_CHECK_SECONDS', a.leaseHolderCheckSeconds),
      proxies: a.proxies.map((p) => ({
        ...p,
        idleTimeoutSeconds: seconds(env, 'VMRESTORE_AZURE_PROXY_IDLE_SECONDS', p.idleTimeoutSeconds)!,
        workerWaitSeconds: seconds(env, 'VMRESTORE_AZURE_PROXY_WORKER_WAIT_SECONDS', p.workerWaitSeconds)!,
        embeddedWorker: env.VMRESTORE_LAB_AZURE_PROXY_WORKER === 'separate' ? false : p.embeddedWorker,
      })),
      helpers: Object.fromEntries(
        Object.entries(a.helpers).map(([location, h]) => [
          location,
          {
            ...h,
            idleTimeoutSeconds: seconds(env, 'VMRESTORE_AZURE_HELPER_IDLE_SECONDS', h.idleTimeoutSeconds)!,
            embeddedWorker: env.VMRESTORE_LAB_HELPER_WORKER === 'separate' ? false : h.embeddedWorker,
          },
        ]),
      ),
    };
  }
  return out;
}
