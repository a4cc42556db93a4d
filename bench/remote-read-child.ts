/** One full disk read through the data mover, in a process of its own like a worker's; prints seconds and bytes. */
import { readFileSync } from 'node:fs';
import { RemoteRepository } from '../src/repository/remote';

async function main(): Promise<void> {
  const [url, tokenFile, caFile, restorePointId, streams] = process.argv.slice(2);
  const repo = new RemoteRepository({
    url,
    token: readFileSync(tokenFile, 'utf8').trim(),
    ca: readFileSync(caFile),
    streamsPerDisk: Number(streams),
  });
  try {
    const t = process.hrtime.bigint();
    const rp = await repo.getRestorePoint(restorePointId);
    let bytes = 0;
    for await (const b of repo.readDiskBlocks(rp, 0)) bytes += b.data?.length ?? 0;
    process.stdout.write(`${Number(process.hrtime.bigint() - t) / 1e9} ${bytes}\n`);
  } finally {
    repo.close();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
