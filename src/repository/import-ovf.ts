import { createHash } from 'node:crypto';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { FailureType, RestoreError } from '../domain/errors';
import { ByteReader, openDiskImage, openDiskImageStream, type DiskImage } from './formats';
import { MAX_DESCRIPTOR_BYTES, parseManifest, parseOvf, type ManifestEntry } from './formats/ovf';
import { TarReader } from './formats/tar';
import type { ExtentOptions } from './formats/image';
import { importVm, type ImportOptions, type ImportResult } from './importer';

/** A disk the envelope declares without a file: all zeros. */
function blankDisk(label: string, capacityBytes: number): DiskImage {
  return {
    path: label,
    format: 'raw',
    subformat: 'blank',
    capacityBytes,

    extents: async function* () {
      yield { offset: 0, length: capacityBytes, data: null };
    },
    close: async () => undefined,
  };
}

function checkDigest(
  file: string,
  expected: ManifestEntry,
  actual: Partial<Record<ManifestEntry['algorithm'], string>>,
  manifest: string,
): void {
  const got = actual[expected.algorithm];
  if (got === undefined)
    throw new RestoreError(
      FailureType.InvalidRequest,
      `manifest ${manifest}: ${file} was not read, so its ${expected.algorithm} cannot be checked`,
    );
  if (got !== expected.hex) {
    throw new RestoreError(
      FailureType.InvalidRequest,
      `manifest ${manifest}: ${file} has ${expected.algorithm.toUpperCase()} ${got}, but the manifest says ${expected.hex}; the file is damaged or was changed`,
    );
  }
}

async function hashFile(file: string, algorithm: string): Promise<string> {
  const reader = ByteReader.ofFile(file);
  const hash = reader.digest(algorithm);
  await reader.drain();
  return hash.digest('hex');
}

/**
 * Imports an OVF (descriptor, manifest and disk files in one folder). The manifest's digests, when there
 * is one, are checked before any disk is read.
 */
export async function importOvfRestorePoint(repoDir: string, ovfPath: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const file = path.resolve(ovfPath);
  const stat = await fs.stat(file).catch(() => null);
  if (!stat?.isFile()) throw new RestoreError(FailureType.InvalidRequest, `OVF descriptor ${file} not found`);
  if (stat.size > MAX_DESCRIPTOR_BYTES)
    throw new RestoreError(FailureType.InvalidRequest, `OVF descriptor ${file} is ${stat.size} bytes, more than ${MAX_DESCRIPTOR_BYTES}`);
  const text = await fs.readFile(file, 'utf8');
  const envelope = parseOvf(text, file);
  const dir = path.dirname(file);
  const manifestPath = path.join(dir, `${path.basename(file, path.extname(file))}.mf`);
  const manifestText = await fs.readFile(manifestPath, 'utf8').catch(() => null);
  if (manifestText !== null) {
    const manifest = parseManifest(manifestText, manifestPath);
    for (const [name, entry] of manifest) {
      const target = path.resolve(dir, name);
      if (path.dirname(target) !== dir)
        throw new RestoreError(FailureType.InvalidRequest, `manifest ${manifestPath}: '${name}' is not a file next to it`);
      const exists = await fs.stat(target).then(
        (s) => s.isFile(),
        () => false,
      );
      if (!exists)
        throw new RestoreError(FailureType.InvalidRequest, `manifest ${manifestPath}: ${name} is listed but not found in ${dir}`);
      checkDigest(name, entry, { [entry.algorithm]: await hashFile(target, entry.algorithm) }, manifestPath);
    }
  }
  return importVm(
    repoDir,
    {
      vm: envelope.vm,
      openDisk: (index) => {
        const disk = envelope.disks[index];
        return disk.href === null
          ? Promise.resolve(blankDisk(`${file} disk ${index}`, disk.capacityBytes))
          : openDiskImage(path.join(dir, disk.href));
      },
    },
    opts,
  );
}

/**
 * Imports an OVA in one pass: the OVF descriptor first (as the OVF specification requires), then the
 * manifest and the disk files in References order, each disk streamed straight into the repository while
 * its digests are computed; the manifest is checked before the restore point is saved.
 */
export async function importOvaRestorePoint(repoDir: string, ovaPath: string, opts: ImportOptions = {}): Promise<ImportResult> {
  const archive = path.resolve(ovaPath);
  const stat = await fs.stat(archive).catch(() => null);
  if (!stat?.isFile()) throw new RestoreError(FailureType.InvalidRequest, `OVA ${archive} not found`);
  const fail = (what: string) => new RestoreError(FailureType.InvalidRequest, `OVA ${archive}: ${what}`);
  const tar = new TarReader(ByteReader.ofFile(archive), archive);
  const first = await tar.next();
  if (!first || !first.name.toLowerCase().endsWith('.ovf'))
    throw fail(`the first member must be the OVF descriptor (found ${first ? `'${first.name}'` : 'nothing'})`);
  if (first.size > MAX_DESCRIPTOR_BYTES) throw fail(`descriptor ${first.name} is ${first.size} bytes, more than ${MAX_DESCRIPTOR_BYTES}`);
  const ovfBytes = await first.body.readExact(first.size);
  if (!ovfBytes) throw fail(`descriptor ${first.name} is truncated`);
  const envelope = parseOvf(ovfBytes.toString('utf8'), `${archive}:${first.name}`);
  const digests = new Map<string, Partial<Record<ManifestEntry['algorithm'], string>>>();
  digests.set(first.name, {
    sha1: createHash('sha1').update(ovfBytes).digest('hex'),
    sha256: createHash('sha256').update(ovfBytes).digest('hex'),
    sha512: createHash('sha512').update(ovfBytes).digest('hex'),
  });
  const manifestName = `${first.name.replace(/\.ovf$/i, '')}.mf`;
  let manifest: Map<string, ManifestEntry> | null = null;
  const referenced = new Set(envelope.disks.map((d) => d.href).filter((h): h is string => h !== null));

  /** Reads members up to `want` (or the end), taking in the manifest and skipping certificates on the way. */
  const advance = async (want: string | null) => {
    for (;;) {
      const member = await tar.next();
      if (!member) {
        if (want) throw fail(`member '${want}' is missing (the disks must follow the descriptor in References order)`);
        return null;
      }
      if (member.name === want) return member;
      if (member.name === manifestName) {
        const body = await member.body.readExact(Math.min(member.size, MAX_DESCRIPTOR_BYTES));
        if (!body) throw fail(`manifest ${member.name} is truncated`);
        manifest = parseManifest(body.toString('utf8'), `${archive}:${member.name}`);
        continue;
      }
      if (referenced.has(member.name) && !digests.has(member.name)) {
        throw fail(`member '${member.name}' comes before '${want}'; the disks must be in References order`);
      }
      // Certificates and files no disk refers to are read past, and digested in case the manifest lists them.
      const sha1 = member.body.digest('sha1');
      const sha256 = member.body.digest('sha256');
      await member.body.drain();
      digests.set(member.name, { sha1: sha1.digest('hex'), sha256: sha256.digest('hex') });
    }
  };

  // Disks are read in the order their files appear in References, which is the order of the archive.
  const order = envelope.disks
    .map((d) => d.index)
    .sort((a, b) => {
      const rank = (i: number) => (envelope.disks[i].href === null ? -1 : envelope.files.indexOf(envelope.disks[i].href!));
      return rank(a) - rank(b);
    });
  return importVm(
    repoDir,
    {
      vm: envelope.vm,
      diskOrder: order,
      openDisk: async (index) => {
        const disk = envelope.disks[index];
        if (disk.href === null) return blankDisk(`${archive} disk ${index}`, disk.capacityBytes);
        if (digests.has(disk.href)) throw fail(`disk ${index} uses file '${disk.href}', which an earlier disk already read`);
        const member = await advance(disk.href);
        const sha1 = member!.body.digest('sha1');
        const sha256 = member!.body.digest('sha256');
        const sha512 = member!.body.digest('sha512');
        const label = `${archive}:${disk.href}`;
        const image = await openDiskImageStream(member!.body, label, member!.size);
        let complete = false;
        return {
          ...image,
          extents: (from?: number, to?: number, extentOpts?: ExtentOptions) => {
            const extents = image.extents(from, to, extentOpts);
            return (async function* () {
              yield* extents;
              complete = true;
            })();
          },
          close: async () => {
            // After a failed read the import fails anyway; the rest of the archive is not worth reading.
            if (!complete) return;
            if (!(await member!.body.drain())) throw fail(`member '${disk.href}' is truncated`);
            digests.set(disk.href!, { sha1: sha1.digest('hex'), sha256: sha256.digest('hex'), sha512: sha512.digest('hex') });
            await image.close();
          },
        };
      },
      beforeSave: async () => {
        await advance(null);
        const checked = manifest as Map<string, ManifestEntry> | null;
        if (!checked) return;
        for (const [name, entry] of checked) {
          const got = digests.get(name);
          if (!got) throw fail(`manifest lists '${name}', which the archive does not hold`);
          checkDigest(name, entry, got, `${archive}:${manifestName}`);
        }
      },
    },
    opts,
  );
}
