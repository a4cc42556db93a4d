import { insecureWarnings, loadAppConfig, type AppConfig } from '../config';
import { FailureType, RestoreError } from '../domain/errors';
import { VERIFY_USAGE } from './verify-command';
import { PLAN_USAGE } from './plan-command';

export const USAGE = `vmrestore: restore whole VMs from backups to vSphere (and Azure) on Temporal

  vmrestore lab up|status|down [--json] [--purge] [--temporal dev|cluster]
  vmrestore repo import --vm vm.json | --ovf vm.ovf | --ova vm.ova [--json]
  vmrestore repo import --from-vsphere VM [--profile P] [--datacenter DC] [--json]   (a restore point of a running VM, as a workflow)
  vmrestore repo list|show ID|verify [ID] [--json]
  vmrestore repo seed-demo [--bootable-guests] [--json]   (or VMRESTORE_DEMO_BOOTABLE_GUESTS=1)
  vmrestore repository serve --listen HOST:PORT [--verify-chunks]   (the repository host's data mover: restore
        points and chunks over HTTPS for workers with repository.url; needs repository.serve.certFile/keyFile and
        repository.tokenFile or tokenEnv; a config with only the repository section will do)
  vmrestore codec-server [--port 8888] [--host ADDR] [--origin URL]... [--allowed-host NAME]...
        [--token-file FILE]   (decrypts payloads for the Web UI; bearer token from VMRESTORE_CODEC_TOKEN or the file)
  vmrestore worker [--helper LOCATION | --verifier | --proxy NAME] [--metrics HOST:PORT]   (--helper: the worker inside
        that location's helper appliance; --verifier: only boot verification, on a machine with qemu; --proxy: the
        disk writer on that vSphere proxy host, which checks the proxy's configured paths first; --metrics: serve
        Prometheus metrics at /metrics; traces go by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set)
  vmrestore restore vsphere --restore-point ID --vm-name NAME [--datastore DS] [--folder F]
        [--resource-pool P] [--network SRC=DST]... [--transport auto|direct-san|direct-nas|hotadd|nbd]
        [--disk-format same|thin|thick-lazy|thick-eager] [--proxy NAME] [--power-on]
        [--keep-on-failure] [--throttle-mbps N] [--wait] [--json]
        [--verify [--verify-address IP/N [--verify-gateway IP]] [--verify-timeout S] [--keep-on-verify-failure]]
  vmrestore restore azure --restore-point ID --vm-name NAME [--resource-group RG] [--location L]
        [--vm-size S] [--subnet ID] [--generation 1|2] [--proxy NAME] [--keep-on-failure] [--wait] [--json]
        [--verify [--verify-timeout S] [--keep-on-verify-failure]]
  vmrestore status WORKFLOW_ID [--json]
  vmrestore cancel WORKFLOW_ID
${PLAN_USAGE}
  vmrestore sweep [--dry-run] [--include-orphans] [--json] | --install-schedule [--every MINUTES]
        (remove what restores that closed without completing left behind)
${VERIFY_USAGE}
  vmrestore demo            (what npm start runs)
  vmrestore prereqs [--for start|test] [--no-install]   (checks, and as root installs, the Debian tools)
  vmrestore version         (vmrestore's version and the Node.js it runs on)
`;

export const out = (s: string) => process.stdout.write(s + '\n');
export const err = (s: string) => process.stderr.write(s + '\n');

/** The config for a command that talks to Temporal or vCenter; warns about profiles allowed to skip TLS. */
export function loadConfig(): AppConfig {
  const config = loadAppConfig();
  for (const w of insecureWarnings(config)) err(w);
  return config;
}

export function usageError(message: string): never {
  throw new RestoreError(FailureType.InvalidRequest, `${message}\n\n${USAGE}`);
}
