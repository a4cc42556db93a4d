import http from 'node:http';
import type { Payload } from '@temporalio/common';

/** A payload as the codec server's JSON carries it: metadata values and data in base64. */
export const toJsonPayload = (p: Payload) => ({
  metadata: Object.fromEntries(Object.entries(p.metadata!).map(([k, v]) => [k, Buffer.from(v).toString('base64')])),
  data: Buffer.from(p.data!).toString('base64'),
});

/** A real HTTP request to the codec server on loopback (fetch cannot set Host). */
export function post(
  port: string,
  pathname: string,
  body: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; text: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const chunked = headers['Transfer-Encoding'] === 'chunked';
    const req = http.request(
      {
        host: '127.0.0.1',
        port: Number(port),
        path: pathname,
        method: 'POST',
        headers: { 'Content-Type': 'application/json', ...(chunked ? {} : { 'Content-Length': Buffer.byteLength(body) }), ...headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text, headers: res.headers }));
      },
    );
    req.on('error', reject);
    if (chunked) {
      for (let i = 0; i < body.length; i += 256 * 1024) req.write(body.slice(i, i + 256 * 1024));
      req.end();
    } else req.end(body);
  });
}
