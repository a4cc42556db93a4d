import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FailureType, RestoreError } from '../../src/domain/errors';
import { buildDataDiskImage } from '../../src/lab/demo';
import { getRestorePoint, listRestorePoints, readDiskBlocks, type DiskBlock, type RestorePoint } from '../../src/repository';
import { chunkPath } from '../../src/repository/format';
import { RemoteRepository } from '../../src/repository/remote';
import { makeDataMoverCredentials, startDataMoverProcess, type DataMoverCredentials, type DataMoverProcess } from '../helpers/data-mover';
import { importTestVm } from '../helpers/env';

const MiB = 1024 * 1024;

let work: string;
let repoDir: string;
let creds: DataMoverCredentials;
let server: DataMoverProcess;
let rpId: string;

const client = (over: Partial<ConstructorParameters<typeof RemoteRepository>[0]> = {}) =>
  new RemoteRepository({ url: server.url, token: creds.token, thumbprint: creds.thumbprint, ...over });

async function digestBlocks(blocks: AsyncIterable<DiskBlock>): Promise<{ sha256: string; layout: string[] }> {
  const h = createHash('sha256');
  const layout: string[] = [];
  for await (const b of blocks) {
    layout.push(`${b.offset}+${b.length}${b.data ? '' : ' zero'}`);
    h.update(b.data ?? Buffer.alloc(b.length));
  }
  return { sha256: h.digest('hex'), layout };
}

async function failure(p: Promise<unknown>): Promise<RestoreError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof RestoreError, `expected a RestoreError, got ${String(err)}`);
    return err;
  }
  return assert.fail('expected the read to fail');
}

async function drain(blocks: AsyncIterable<DiskBlock>): Promise<void> {
  for await (const b of blocks) void b;
}

/** Peak and current resident memory of a process, from /proc. */
function memoryOf(pid: number): { rss: number; hwm: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)![1]) * 1024;
  return { rss: kib('VmRSS'), hwm: kib('VmHWM') };
}

describe('repository data mover (repository serve over HTTPS, client verifying every chunk)', () => {
  before(async () => {
    work = mkdtempSync(path.join(tmpdir(), 'vmrestore-remote-'));
    repoDir = path.join(work, 'repository');
    creds = makeDataMoverCredentials(path.join(work, 'pki'));
    const seed = randomBytes(4).toString('hex');
    // Data, holes and a partial last block: 40 MiB + 512 bytes, 1 MiB blocks.
    buildDataDiskImage(
      path.join(work, 'disk0.img'),
      40 * MiB + 512,
      [
        [0, 6 * MiB],
        [20 * MiB + 4096, 3 * MiB],
        [40 * MiB - 8192, 8704],
      ],
      `${seed}-0`,
    );
    buildDataDiskImage(path.join(work, 'disk1.img'), 24 * MiB, [[0, 24 * MiB]], `${seed}-1`);
    rpId = await importTestVm(repoDir, work, {
      name: 'remote-vm',
      disks: [
        { path: 'disk0.img', provisioning: 'thin' },
        { path: 'disk1.img', provisioning: 'thick' },
      ],
    });
    server = await startDataMoverProcess({ repoDir, dir: work, creds });
  });
  after(async () => {
    await server?.kill();
    rmSync(work, { recursive: true, force: true });
  });

  it('serves restore points and disk blocks identical to local reads, also from a resume offset', async () => {
    const remote = client();
    const parallel = client({ streamsPerDisk: 3 });
    try {
      assert.deepEqual(await remote.listRestorePoints(), await listRestorePoints(repoDir));
      const local = await getRestorePoint(repoDir, rpId);
      const rp = await remote.getRestorePoint(rpId.slice(0, -3));
      assert.deepEqual(rp, local, 'restore point by unique prefix');
      for (const disk of [0, 1]) {
        for (const fromOffset of [0, 3 * MiB + 4096, local.disks[disk].capacityBytes]) {
          const expected = await digestBlocks(readDiskBlocks(repoDir, local, disk, { fromOffset }));
          const actual = await digestBlocks(remote.readDiskBlocks(rp, disk, { fromOffset }));
          assert.deepEqual(actual, expected, `disk ${disk} from ${fromOffset}: blocks and bytes equal the local read`);
          const striped = await digestBlocks(parallel.readDiskBlocks(rp, disk, { fromOffset }));
          assert.deepEqual(striped, expected, `disk ${disk} from ${fromOffset} over 3 streams: blocks and bytes equal the local read`);
        }
      }
      const missing = await failure(remote.getRestorePoint('rp-20000101000000-abcdef'));
      assert.equal(missing.type, FailureType.RestorePointNotFound);
      assert.match(missing.message, /not found in repository/);
    } finally {
      remote.close();
      parallel.close();
    }
  });

  it('fails a chunk changed on the repository host with the non-retryable error naming VM, disk and offset', async () => {
    const rp = await getRestorePoint(repoDir, rpId);
    const blockIndex = 17;
    const hash = rp.disks[1].blocks[blockIndex]!;
    const file = chunkPath(repoDir, hash);
    const original = readFileSync(file);
    const remote = client();
    try {
      const tampered = Buffer.from(original);
      tampered[4242] ^= 0x01;
      writeFileSync(file, tampered);
      const local = await failure(drain(readDiskBlocks(repoDir, rp, 1)));
      const err = await failure(drain(remote.readDiskBlocks(rp, 1)));
      const where = `restore point ${rpId} VM 'remote-vm' disk 1 at offset ${blockIndex * MiB}: chunk ${hash} is corrupt (sha256 mismatch`;
      assert.equal(err.type, FailureType.RepositoryCorrupt);
      assert.equal(err.nonRetryable, true);
      assert.ok(err.message.startsWith(where), `remote error names VM, disk and offset: ${err.message}`);
      assert.ok(local.message.startsWith(where), `local error is the same: ${local.message}`);

      writeFileSync(file, original.subarray(0, original.length - 512));
      const short = await failure(drain(remote.readDiskBlocks(rp, 1)));
      assert.equal(short.type, FailureType.RepositoryCorrupt);
      assert.match(
        short.message,
        new RegExp(`disk 1 at offset ${blockIndex * MiB}: chunk ${hash} is corrupt \\(size ${original.length - 512} bytes`),
      );

      rmSync(file);
      const gone = await failure(drain(remote.readDiskBlocks(rp, 1)));
      assert.equal(gone.type, FailureType.RepositoryCorrupt);
      assert.match(gone.message, new RegExp(`disk 1 at offset ${blockIndex * MiB}: chunk ${hash} is missing on the repository host`));
    } finally {
      writeFileSync(file, original);
      remote.close();
    }
  });

  it('refuses a wrong token with a clear non-retryable error naming the URL', async () => {
    const remote = client({ token: 'not-the-token-of-this-server' });
    try {
      const started = Date.now();
      const err = await failure(remote.getRestorePoint(rpId));
      assert.equal(err.type, FailureType.Configuration);
      assert.equal(err.nonRetryable, true);
      assert.ok(err.message.includes(`repository data mover ${server.url} refused the bearer token (HTTP 401)`), err.message);
      assert.ok(Date.now() - started < 5000, 'no reconnect loop for a refused token');
    } finally {
      remote.close();
    }
  });

  it('refuses a certificate that is not the pinned one or not signed by the configured CA', async () => {
    const other = makeDataMoverCredentials(path.join(work, 'other-pki'), 'other');
    for (const over of [{ thumbprint: other.thumbprint }, { thumbprint: undefined, ca: readFileSync(other.certFile) }]) {
      const remote = client(over);
      try {
        const err = await failure(remote.getRestorePoint(rpId));
        assert.equal(err.type, FailureType.Configuration);
        assert.ok(err.message.includes(`repository data mover ${server.url}: TLS certificate not trusted`), err.message);
      } finally {
        remote.close();
      }
    }
    const byCa = client({ thumbprint: undefined, ca: readFileSync(creds.certFile) });
    try {
      assert.equal((await byCa.getRestorePoint(rpId)).id, rpId, 'the server certificate as CA file is trusted');
    } finally {
      byCa.close();
    }
  });

  it('reconnects to a repository host restarted mid-read and yields the same bytes; a host that stays down is a retryable failure', async () => {
    const rp = await getRestorePoint(repoDir, rpId);
    const expected = await digestBlocks(readDiskBlocks(repoDir, rp, 1));
    const remote = client({ retryWindowMs: 20_000 });
    try {
      const h = createHash('sha256');
      const layout: string[] = [];
      let n = 0;
      for await (const b of remote.readDiskBlocks(rp, 1)) {
        layout.push(`${b.offset}+${b.length}${b.data ? '' : ' zero'}`);
        h.update(b.data ?? Buffer.alloc(b.length));
        if (++n === 5) {
          await server.kill();
          setTimeout(() => {
            startDataMoverProcess({ repoDir, dir: work, creds, port: server.port }).then(
              (s) => (server = s),
              () => undefined,
            );
          }, 1500);
        }
      }
      assert.deepEqual({ sha256: h.digest('hex'), layout }, expected, 'bytes after the restart equal the local read');
      assert.ok(server.child.exitCode === null, 'a new data mover serves the rest');
    } finally {
      remote.close();
    }

    await server.kill();
    const impatient = client({ retryWindowMs: 1500 });
    try {
      const err = await failure(drain(impatient.readDiskBlocks(rp, 0)));
      assert.equal(err.type, FailureType.RepositoryUnavailable);
      assert.equal(err.nonRetryable, false, 'a retry of the activity may find the host back');
      assert.ok(err.message.includes(`repository data mover ${server.url} did not answer`), err.message);
    } finally {
      impatient.close();
      server = await startDataMoverProcess({ repoDir, dir: work, creds, port: server.port });
    }
  });

  it('serves a 1 GiB disk to a slow reader with bounded memory on both sides', async () => {
    // Every block of the big disk shares one stored chunk, so the repository costs 1 MiB of files.
    const chunk = randomBytes(MiB);
    const hash = createHash('sha256').update(chunk).digest('hex');
    mkdirSync(path.dirname(chunkPath(repoDir, hash)), { recursive: true });
    writeFileSync(chunkPath(repoDir, hash), chunk);
    const small = await getRestorePoint(repoDir, rpId);
    const blocks = 1024;
    const big: RestorePoint = {
      ...small,
      id: `rp-20990101000000-${randomBytes(3).toString('hex')}`,
      vm: { ...small.vm, name: 'big-vm', disks: [{ ...small.vm.disks[1], index: 0, capacityBytes: blocks * MiB }] },
      disks: [{ index: 0, capacityBytes: blocks * MiB, blocks: new Array<string>(blocks).fill(hash) }],
    };
    writeFileSync(path.join(repoDir, 'restore-points', `${big.id}.json`), JSON.stringify(big));
    const remote = client();
    try {
      const rp = await remote.getRestorePoint(big.id);
      const pid = server.child.pid!;
      const before = memoryOf(pid);
      const clientBefore = process.memoryUsage().rss;
      let n = 0;
      let peakClient = 0;
      for await (const b of remote.readDiskBlocks(rp, 0)) {
        assert.ok(b.data?.equals(chunk), `block ${n} is the stored chunk`);
        // A reader that stalls: a server that ignored back-pressure would queue the rest of the disk now.
        if (++n === 8) await new Promise((r) => setTimeout(r, 2000));
        if (n % 64 === 0) peakClient = Math.max(peakClient, process.memoryUsage().rss);
      }
      assert.equal(n, blocks);
      const during = memoryOf(pid);
      const serverGrowth = during.hwm - before.rss;
      assert.ok(serverGrowth < 96 * MiB, `server peak RSS grew by ${(serverGrowth / MiB).toFixed(0)} MiB serving 1 GiB (limit 96)`);
      const clientGrowth = peakClient - clientBefore;
      assert.ok(clientGrowth < 160 * MiB, `client RSS grew by ${(clientGrowth / MiB).toFixed(0)} MiB reading 1 GiB (limit 160)`);
    } finally {
      remote.close();
      rmSync(path.join(repoDir, 'restore-points', `${big.id}.json`));
    }
  });
});
