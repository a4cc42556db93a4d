import { readFileSync } from 'node:fs';
import https from 'node:https';
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob';
import { labConfig, readLabState } from '../../src/lab';
import type { LabAzure } from '../../src/lab/azure';
import type { ArmClients } from '../../src/lab/armsim';
import { armClientsFor } from '../../src/azure/credential';
import { withManagedDiskRead } from '../../src/azure/managed-disk-read';
import { copyRangesToSparseFile } from '../../src/sparse-file';
import type { FaultRule, RequestLogEntry } from '../../src/lab/armsim';

export function labAzure(): LabAzure {
  const a = readLabState().azure as LabAzure | undefined;
  if (!a) throw new Error('lab has no ARM simulator');
  return a;
}

/** ARM clients signed in exactly as the lab's workers are. */
export function labArm(): ArmClients {
  const azure = labConfig(readLabState()).azure;
  if (!azure) throw new Error('lab has no ARM simulator');
  return armClientsFor(azure);
}

export function labContainer(): ContainerClient {
  const s = readLabState();
  return BlobServiceClient.fromConnectionString(s.blob!.connectionString).getContainerClient(labAzure().container);
}

/** Calls the simulator's admin API (fault injection, request log). */
export function armAdmin<T>(method: string, path: string, body?: unknown): Promise<T> {
  const a = labAzure();
  return new Promise((resolve, reject) => {
    const req = https.request(
      `${a.armEndpoint}${path}`,
      {
        method,
        ca: readFileSync(a.caCertPath),
        headers: { 'content-type': 'application/json', 'x-admin-token': readFileSync(a.adminTokenFile, 'utf8').trim() },
      },
      (res) => {
        let text = '';
        res.on('data', (d) => (text += d));
        res.on('end', () => {
          if ((res.statusCode ?? 500) >= 300) reject(new Error(`${method} ${path}: ${res.statusCode} ${text}`));
          else resolve((text ? JSON.parse(text) : {}) as T);
        });
      },
    );
    req.on('error', reject);
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}

export const setFaults = (rules: FaultRule[]) => armAdmin('POST', '/_admin/faults', { rules });
export const clearFaults = () => armAdmin('DELETE', '/_admin/faults');
export async function armLog(): Promise<RequestLogEntry[]> {
  const r = await armAdmin<{ entries?: RequestLogEntry[]; log?: RequestLogEntry[] } | RequestLogEntry[]>('GET', '/_admin/log');
  return Array.isArray(r) ? r : (r.entries ?? r.log ?? []);
}

/**
 * Reads a managed disk as one would on Azure (grant read access, list its written pages and read them
 * through the SAS, revoke) into a local sparse raw image. The disk must not be attached to a running VM
 * (deallocate it first).
 */
export async function downloadManagedDisk(arm: ArmClients, diskId: string, imagePath: string): Promise<{ bytes: number; seconds: number }> {
  const started = Date.now();
  const bytes = await withManagedDiskRead(arm, diskId, (r) => copyRangesToSparseFile(r, imagePath), {
    caCertPath: labAzure().caCertPath || undefined,
    durationSeconds: 900,
  });
  return { bytes, seconds: (Date.now() - started) / 1000 };
}
