import { createCipheriv, createHash } from 'node:crypto';

/**
 * Deterministic pseudo-random bytes for the lab's demo and test images: the AES-128-CTR keystream under
 * a key and counter derived from the seed and label. Fast (hardware AES) and the same on every machine,
 * so images are reproducible; successive calls continue the stream.
 */
export function seededStream(seed: string, label = ''): (n: number) => Buffer {
  const k = createHash('sha256').update(`vmrestore-seeded\0${seed}\0${label}`).digest();
  const cipher = createCipheriv('aes-128-ctr', k.subarray(0, 16), k.subarray(16, 32));
  return (n) => cipher.update(Buffer.alloc(n));
}
