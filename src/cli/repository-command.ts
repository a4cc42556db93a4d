import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadAppConfig } from '../config';
import { FailureType, RestoreError } from '../domain/errors';
import { loadRepositoryToken, startRepositoryServer } from '../repository/remote';
import { repoCommand } from './repo-command';
import { out, usageError } from './usage';

/** `vmrestore repository serve`: the repository host's data mover; other subcommands are `repo`'s. */
export async function repositoryCommand(sub: string | undefined, args: string[]): Promise<number> {
  if (sub !== 'serve') return repoCommand(sub, args);
  const { values } = parseArgs({ args, options: { listen: { type: 'string' }, 'verify-chunks': { type: 'boolean' } } });
  if (!values.listen) usageError('repository serve needs --listen HOST:PORT (e.g. 0.0.0.0:8443)');
  const { host, port } = parseListen(values.listen);
  // Only the repository section matters here: the repository host holds no vCenter or Azure credentials.
  const { repository } = loadAppConfig();
  if (!repository.serve) {
    throw new RestoreError(
      FailureType.Configuration,
      'config repository.serve: needs certFile and keyFile (the data mover serves HTTPS only)',
    );
  }
  const pem = (key: 'certFile' | 'keyFile'): Buffer => {
    try {
      return readFileSync(repository.serve![key]);
    } catch (err) {
      throw new RestoreError(
        FailureType.Configuration,
        `config repository.serve.${key}: cannot read '${repository.serve![key]}': ${(err as Error).message}`,
      );
    }
  };
  const server = await startRepositoryServer({
    repoDir: repository.path,
    host,
    port,
    cert: pem('certFile'),
    key: pem('keyFile'),
    token: loadRepositoryToken(repository),
    verifyChunks: values['verify-chunks'],
    log: (line) => process.stderr.write(`${line}\n`),
  });
  out(`repository data mover for ${repository.path} listening at ${server.url}`);
  out(`certificate SHA-256 ${server.thumbprint} (workers: repository.url ${server.url}, repository.thumbprint or caFile)`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.close();
  return 0;
}

function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:\s]*)):(\d{1,5})$/.exec(listen);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) usageError(`--listen must be HOST:PORT, [IPv6]:PORT or :PORT, got '${listen}'`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}
