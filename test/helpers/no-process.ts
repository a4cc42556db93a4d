import childProcess from 'node:child_process';
import { syncBuiltinESMExports } from 'node:module';

/**
 * Loaded with `--import` before every test/unit file: starting a child process there throws, naming the
 * command, so a unit test that needs a tool or a peer fails at once and belongs in test/integration.
 */
const methods = ['spawn', 'spawnSync', 'exec', 'execSync', 'execFile', 'execFileSync', 'fork'] as const;

for (const name of methods) {
  Object.defineProperty(childProcess, name, {
    configurable: true,
    writable: true,
    value: (command: unknown) => {
      throw new Error(`test/unit runs no process: ${name}(${String(command)}); a test that needs it belongs in test/integration`);
    },
  });
}
syncBuiltinESMExports();
