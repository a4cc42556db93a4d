import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { buildDataDiskImage } from '../src/lab/demo';
import { importRestorePoint } from '../src/repository';
import { makeDataMoverCredentials, startDataMoverProcess } from '../test/helpers/data-mover';

const MiB = 1024 * 1024;

export interface RemoteReadBenchResult {
  bytes: number;
  runs: Array<{ dataMoverSeconds: number; curlSeconds: number; ratio: number }>;
  medianRatio: number;
}

/** A plain HTTPS file server (Node's https + a file stream), the baseline curl downloads from. */
const STATIC_SERVER = `
const https = require('node:https'), fs = require('node:fs');
const [cert, key, file] = process.argv.slice(2);
const size = fs.statSync(file).size;
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size });
  fs.createReadStream(file, { highWaterMark: 1 << 20 }).pipe(res);
}).listen(0, '127.0.0.1', function () { console.log('listening ' + this.address().port); });
`;

function startStaticServer(script: string, args: string[]): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d) => {
      out += d;
      const m = /listening (\d+)/.exec(out);
      if (m) resolve({ child, port: Number(m[1]) });
    });
    child.once('exit', (code) => reject(new Error(`static server exited with ${code}`)));
  });
}

/**
 * A full disk read through the repository data mover (HTTPS, every chunk hashed by the reader) against curl
 * downloading the same bytes from a plain HTTPS file server, both on loopback. Ratio: curl's time / ours.
 */
export async function runRemoteReadBench(log: (s: string) => void = console.log): Promise<RemoteReadBenchResult> {
  const sizeMiB = Number(process.env.VMRESTORE_BENCH_REMOTE_MIB ?? 512);
  const runsWanted = Number(process.env.VMRESTORE_BENCH_RUNS ?? 3);
  // repository.streamsPerDisk: parallel chunk streams per disk (default 1).
  const streams = Number(process.env.VMRESTORE_BENCH_REMOTE_STREAMS ?? 1);
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'vmrestore-bench-remote-'));
  const children: ChildProcess[] = [];
  let stopDataMover = async () => {};
  try {
    const repoDir = path.join(tmp, 'repository');
    const image = path.join(tmp, 'disk0.img');
    // Data everywhere, so the data mover and curl carry exactly the same bytes.
    buildDataDiskImage(image, sizeMiB * MiB, [[0, sizeMiB * MiB]], 'bench-remote');
    writeFileSync(
      path.join(tmp, 'vm.json'),
      JSON.stringify({
        name: 'bench-remote',
        guestOs: 'linux',
        firmware: 'bios',
        cpus: 1,
        memoryMiB: 512,
        nics: [],
        disks: [{ path: 'disk0.img', provisioning: 'thick' }],
      }),
    );
    const { restorePointId } = await importRestorePoint(repoDir, path.join(tmp, 'vm.json'));
    const creds = makeDataMoverCredentials(path.join(tmp, 'pki'));
    const mover = await startDataMoverProcess({ repoDir, dir: tmp, creds });
    stopDataMover = mover.stop;
    const script = path.join(tmp, 'static-https.cjs');
    writeFileSync(script, STATIC_SERVER);
    const plain = await startStaticServer(script, [creds.certFile, creds.keyFile, image]);
    children.push(plain.child);

    const readThroughDataMover = async (): Promise<number> => {
      // A process of its own, as a worker is, so the bench's own heap (the import above) does not weigh on it.
      const { stdout } = await promisify(execFile)(process.execPath, [
        '--import',
        'tsx',
        path.join(__dirname, 'remote-read-child.ts'),
        mover.url,
        creds.tokenFile,
        creds.certFile,
        restorePointId,
        String(streams),
      ]);
      const [seconds, bytes] = stdout.trim().split(' ').map(Number);
      if (bytes !== sizeMiB * MiB) throw new Error(`data mover read ${bytes} bytes, expected ${sizeMiB * MiB}`);
      return seconds;
    };
    const curl = async (): Promise<number> => {
      const url = `https://127.0.0.1:${plain.port}/disk0.img`;
      const { stdout } = await promisify(execFile)('curl', [
        '-sS',
        '--fail',
        '--cacert',
        creds.certFile,
        '-o',
        '/dev/null',
        '-w',
        '%{time_total} %{size_download}',
        url,
      ]);
      const [seconds, size] = stdout.trim().split(' ').map(Number);
      if (size !== sizeMiB * MiB) throw new Error(`curl downloaded ${size} bytes, expected ${sizeMiB * MiB}`);
      return seconds;
    };

    // Warm the page cache for both readers, then alternate so load on the shared machine hits both alike.
    await curl();
    await readThroughDataMover();
    const runs: RemoteReadBenchResult['runs'] = [];
    for (let i = 0; i < runsWanted; i++) {
      const curlSeconds = await curl();
      const dataMoverSeconds = await readThroughDataMover();
      const ratio = curlSeconds / dataMoverSeconds;
      runs.push({ dataMoverSeconds, curlSeconds, ratio });
      const mbps = (s: number) => ((sizeMiB * MiB) / s / 1e6).toFixed(0);
      log(
        `  run ${i + 1}: data mover ${dataMoverSeconds.toFixed(2)} s (${mbps(dataMoverSeconds)} MB/s, every chunk hashed), ` +
          `curl ${curlSeconds.toFixed(2)} s (${mbps(curlSeconds)} MB/s): ${ratio.toFixed(2)}x`,
      );
    }
    const sorted = runs.map((r) => r.ratio).sort((a, b) => a - b);
    const medianRatio = sorted[Math.floor(sorted.length / 2)];
    log(`  ${sizeMiB} MiB over loopback HTTPS, ${streams} chunk stream(s), median ${medianRatio.toFixed(2)}x curl (target >= 0.7x)`);
    return { bytes: sizeMiB * MiB, runs, medianRatio };
  } finally {
    for (const c of children) c.kill('SIGKILL');
    await stopDataMover();
    rmSync(tmp, { recursive: true, force: true });
  }
}
