import { Worker } from 'node:worker_threads';

/**
 * A chunk stream read on a thread of its own: TLS decryption, frame splitting and SHA-256 of each chunk run
 * there, beside the other streams of the disk and the consumer, and each finished chunk comes to the caller
 * as its own memory (transferred, not copied) with its digest. The thread reads at most `ahead` chunks
 * beyond those the caller has taken (`taken()`), so memory stays bounded; it pauses its socket meanwhile.
 */
const THREAD_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const tls = require('node:tls');
const { createHash } = require('node:crypto');
const { host, port, servername, ca, pin, request, ahead, streamType } = workerData;
const HEADER = 9;
let posted = 0, taken = 0, paused = false, done = false;
const finish = (msg) => { if (done) return; done = true; parentPort.postMessage(msg); socket.destroy(); };
const socket = tls.connect({ host, port, servername, ca: ca || undefined, rejectUnauthorized: !pin });
socket.once('secureConnect', () => {
  if (pin) {
    const fp = socket.getPeerCertificate().fingerprint256 || '';
    if (fp.replace(/:/g, '').toUpperCase() !== pin) {
      return finish({ type: 'error', code: 'ERR_TLS_THUMBPRINT_MISMATCH', message: 'certificate SHA-256 ' + fp + ' is not the pinned one' });
    }
  }
  socket.write(request);
});
let head = Buffer.alloc(0), status = 0, left = 0;
const errorBody = [];
const header = Buffer.alloc(HEADER);
let headerFilled = 0, body = null, bodyFilled = 0, hash = null;
socket.on('data', (piece) => {
  if (head !== null) {
    head = Buffer.concat([head, piece]);
    const end = head.indexOf('\\r\\n\\r\\n');
    if (end < 0) return;
    const lines = head.subarray(0, end).toString('latin1').split('\\r\\n');
    status = Number((/^HTTP\\/1\\.[01] (\\d{3})/.exec(lines[0]) || [])[1] || 0);
    const headers = {};
    for (const l of lines.slice(1)) headers[l.slice(0, l.indexOf(':')).trim().toLowerCase()] = l.slice(l.indexOf(':') + 1).trim();
    piece = head.subarray(end + 4);
    head = null;
    if (status === 200) {
      if (headers['content-type'] !== streamType) return finish({ type: 'foreign', contentType: headers['content-type'] });
      left = Number(headers['content-length']);
      if (!Number.isSafeInteger(left)) return finish({ type: 'error', message: 'a chunk stream without a content-length' });
    }
  }
  if (status !== 200) { errorBody.push(piece); return; }
  left -= piece.length;
  let at = 0;
  while (at < piece.length) {
    if (body === null) {
      const n = Math.min(HEADER - headerFilled, piece.length - at);
      piece.copy(header, headerFilled, at, at + n);
      headerFilled += n; at += n;
      if (headerFilled < HEADER) break;
      headerFilled = 0;
      body = Buffer.allocUnsafe(header.readUInt32BE(5));
      bodyFilled = 0;
      hash = header[0] === 0 ? createHash('sha256') : null;
    }
    const n = Math.min(body.length - bodyFilled, piece.length - at);
    const part = piece.subarray(at, at + n);
    part.copy(body, bodyFilled);
    if (hash) hash.update(part);
    bodyFilled += n; at += n;
    if (bodyFilled === body.length) {
      const frame = { type: 'frame', status: header[0], blockIndex: header.readUInt32BE(1), sha256: hash ? hash.digest('hex') : '', body };
      const whole = body.byteOffset === 0 && body.buffer.byteLength === body.length;
      parentPort.postMessage(frame, whole ? [body.buffer] : []);
      posted++;
      body = null;
    }
  }
  if (posted - taken >= ahead && !paused) { paused = true; socket.pause(); }
  if (left <= 0) finish({ type: 'end', complete: true });
});
parentPort.on('message', (m) => {
  if (m === 'taken') { taken++; if (paused && posted - taken < ahead) { paused = false; socket.resume(); } }
  else if (m === 'close') { done = true; socket.destroy(); }
});
socket.once('end', () => {
  if (status !== 0 && status !== 200) return finish({ type: 'http', status, body: Buffer.concat(errorBody).toString('utf8') });
  finish({ type: 'end', complete: false });
});
socket.once('error', (err) => finish({ type: 'error', code: err.code, message: err.message }));
socket.once('close', () => finish({ type: 'end', complete: false }));
`;

export interface StreamThreadOptions {
  host: string;
  port: number;
  servername?: string;
  ca?: string | Buffer;
  /** Pinned SHA-256 fingerprint, bare upper-case hex. */
  pin?: string;
  /** The whole HTTP/1.1 request. */
  request: string;
  ahead: number;
  streamType: string;
}

export type StreamThreadMessage =
  | { type: 'frame'; status: number; blockIndex: number; sha256: string; body: Uint8Array }
  | { type: 'end'; complete: boolean }
  | { type: 'error'; code?: string; message: string }
  | { type: 'http'; status: number; body: string }
  | { type: 'foreign'; contentType: string | undefined };

export interface StreamThread {
  /** The caller has taken one chunk: the thread may read one more. */
  taken(): void;
  close(): void;
}

export function startStreamThread(opts: StreamThreadOptions, onMessage: (m: StreamThreadMessage) => void): StreamThread {
  const worker = new Worker(THREAD_SOURCE, {
    eval: true,
    workerData: { ...opts, ca: opts.ca === undefined ? undefined : opts.ca.toString() },
  });
  let closed = false;
  worker.on('message', (m: StreamThreadMessage) => {
    if (!closed) onMessage(m);
  });
  worker.on('error', (err) => {
    if (!closed) onMessage({ type: 'error', code: (err as NodeJS.ErrnoException).code, message: err.message });
  });
  worker.on('exit', () => {
    if (!closed) onMessage({ type: 'end', complete: false });
  });
  return {
    taken: () => worker.postMessage('taken'),
    close: () => {
      if (closed) return;
      closed = true;
      worker.postMessage('close');
      void worker.terminate();
    },
  };
}
