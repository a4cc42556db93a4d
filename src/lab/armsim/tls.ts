import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export interface LabCertificate {
  caCertPath: string;
  certPath: string;
  keyPath: string;
}

/**
 * A lab CA plus a server certificate signed by it, created with the openssl CLI on first use and kept in
 * the state dir, so clients can trust the CA once (NODE_EXTRA_CA_CERTS or an https.Agent) across restarts.
 * The server certificate is re-issued when the requested host names are not all in its SAN list.
 */
export function ensureLabCertificate(dir: string, hosts: string[]): LabCertificate {
  fs.mkdirSync(dir, { recursive: true });
  const caKey = path.join(dir, 'armsim-ca.key');
  const caCertPath = path.join(dir, 'armsim-ca.pem');
  const keyPath = path.join(dir, 'armsim-server.key');
  const certPath = path.join(dir, 'armsim-server.pem');
  const sanPath = path.join(dir, 'armsim-server.san');

  const names = [...new Set(['127.0.0.1', 'localhost', ...hosts])].sort();
  const san = names.map((h) => (net.isIP(h) ? `IP:${h}` : `DNS:${h}`)).join(',');

  if (!fs.existsSync(caKey) || !fs.existsSync(caCertPath)) {
    openssl([
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-sha256',
      '-days',
      '3650',
      '-keyout',
      caKey,
      '-out',
      caCertPath,
      '-subj',
      '/CN=vmrestore armsim lab CA',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    fs.rmSync(certPath, { force: true });
  }
  const haveSan = fs.existsSync(sanPath) ? fs.readFileSync(sanPath, 'utf8') : '';
  if (!fs.existsSync(certPath) || !fs.existsSync(keyPath) || haveSan !== san) {
    const csr = path.join(dir, 'armsim-server.csr');
    const ext = path.join(dir, 'armsim-server.ext');
    fs.writeFileSync(
      ext,
      [
        'basicConstraints=CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage=serverAuth',
        `subjectAltName=${san}`,
        '',
      ].join('\n'),
    );
    openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', csr, '-subj', '/CN=armsim']);
    openssl([
      'x509',
      '-req',
      '-sha256',
      '-days',
      '825',
      '-in',
      csr,
      '-CA',
      caCertPath,
      '-CAkey',
      caKey,
      '-set_serial',
      `0x${Date.now().toString(16)}`,
      '-out',
      certPath,
      '-extfile',
      ext,
    ]);
    fs.rmSync(csr, { force: true });
    fs.writeFileSync(sanPath, san);
  }
  return { caCertPath, certPath, keyPath };
}

function openssl(args: string[]): void {
  try {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString() ?? '';
    throw new Error(`openssl ${args[0]} failed: ${stderr || (err as Error).message}`);
  }
}
