/**
 * The process that parses and edits guest images: a child with a scrubbed environment, running as an
 * unprivileged uid when the worker is root, killed with its tools on timeout or cancellation.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, promises as fsp, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { RestoreError } from '../../src/domain/errors';
import { UNPRIVILEGED_ID, prepareGuestDiskIsolated } from '../../src/guest/isolation';
import { Ext4Volume } from '../../src/guest/linux/ext4';
import { buildLinuxDiskImage } from '../../src/lab/images/linux-image';
import { buildWindowsDiskImage } from '../../src/lab/images/windows-image';
import { readHiveValueFromDisk, readWindowsFileFromDisk } from '../../src/guest/windows/prep';
import { skipWithout } from '../helpers/requirements';

const MiB = 1024 * 1024;
const asRoot = process.getuid?.() === 0;
let dir: string;

before(async () => {
  dir = await fsp.mkdtemp(join(tmpdir(), 'guest-isolation-'));
});
after(async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});

async function ubuntuWithoutUfwMarker(name: string): Promise<string> {
  await fsp.mkdir(join(dir, name));
  const img = await buildLinuxDiskImage(join(dir, name, 'disk.img'), {
    sizeBytes: 128 * MiB,
    scheme: 'mbr',
    hostname: name,
    networkStyle: 'netplan',
    firewall: 'ufw',
    usedMiB: 1,
    customize: async (root) => {
      const rules = join(root, 'etc/ufw/user.rules');
      await fsp.writeFile(rules, (await fsp.readFile(rules, 'utf8')).replace('### END RULES ###\n', ''));
    },
  });
  return img.imagePath;
}

interface ProcSeen {
  pid: number;
  cmd: string;
  uid: number;
  environ: string;
}

/** Watches /proc for the preparation child and the disk tools it starts, independent of their own report. */
function watchProcesses(imageDirHint: string): { stop: () => ProcSeen[] } {
  const seen = new Map<number, ProcSeen>();
  const scan = () => {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const pid = Number(entry);
      if (pid === process.pid || seen.has(pid)) continue;
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
        if (!/prep-child|debugfs|vmrestore-guest-prep/.test(cmd) && !cmd.includes(imageDirHint)) continue;
        const uid = Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
        seen.set(pid, { pid, cmd, uid, environ: readFileSync(`/proc/${pid}/environ`, 'utf8') });
      } catch {
        // Gone between listing and reading.
      }
    }
  };
  const timer = setInterval(scan, 5);
  return {
    stop: () => {
      clearInterval(timer);
      return [...seen.values()];
    },
  };
}

describe('guest preparation isolation', { timeout: 300_000 }, () => {
  it('runs without the worker environment, as an unprivileged uid, and returns the warnings', async () => {
    const secret = `fake-secret-${randomBytes(8).toString('hex')}`;
    process.env.VMRESTORE_TEST_STORAGE_KEY = secret;
    process.env.AZURE_CLIENT_SECRET = secret;
    const image = await ubuntuWithoutUfwMarker('envcheck');
    const before = await fsp.stat(image);
    const boxesBefore = readdirSync(tmpdir()).filter((n) => n.startsWith('vmrestore-guest-prep-')).length;
    const watch = watchProcesses('vmrestore-guest-prep-');
    let r;
    try {
      r = await prepareGuestDiskIsolated({ osType: 'Linux', imagePath: image });
    } finally {
      delete process.env.VMRESTORE_TEST_STORAGE_KEY;
      delete process.env.AZURE_CLIENT_SECRET;
    }
    const procs = watch.stop();

    // The child's own report: environment names only.
    assert.deepEqual(r.sandbox.envKeys, ['HOME', 'LC_ALL', 'PATH', 'TMPDIR']);
    if (asRoot) {
      assert.equal(r.sandbox.uid, UNPRIVILEGED_ID);
      assert.equal(r.sandbox.gid, UNPRIVILEGED_ID);
      assert.ok(!r.sandbox.groups.includes(0), `supplementary groups ${r.sandbox.groups}`);
    } else {
      assert.equal(r.sandbox.uid, process.getuid!());
    }
    // And what /proc shows of the child and the tools it ran.
    const child = procs.find((p) => p.cmd.includes('prep-child'));
    assert.ok(child, `the preparation child was seen in /proc (saw: ${procs.map((p) => p.cmd.slice(0, 60)).join(' | ')})`);
    assert.ok(
      procs.some((p) => /debugfs/.test(p.cmd)),
      'debugfs runs as a grandchild',
    );
    for (const p of procs) {
      assert.ok(!p.environ.includes(secret), `${p.cmd.slice(0, 80)} sees the parent's secret`);
      const keys = p.environ
        .split('\0')
        .filter(Boolean)
        .map((kv) => kv.split('=')[0]);
      assert.ok(
        keys.every((k) =>
          ['HOME', 'LC_ALL', 'PATH', 'TMPDIR', 'DEBUGFS_PAGER', 'PAGER', 'NODE_CHANNEL_FD', 'NODE_CHANNEL_SERIALIZATION_MODE'].includes(k),
        ),
        `${p.cmd.slice(0, 60)} env keys: ${keys.join(',')}`,
      );
      if (asRoot) assert.equal(p.uid, UNPRIVILEGED_ID, `${p.cmd.slice(0, 60)} runs as uid ${p.uid}`);
    }

    // Warnings from the editors are part of the result.
    assert.ok(
      r.warnings.includes('/etc/ufw/user.rules: ufw rules file has no "### END RULES ###" marker; SSH not opened'),
      r.warnings.join('\n'),
    );
    assert.ok(r.changes.length > 5);
    // The image is back where it was, with its owner; nothing is left behind.
    const now = await fsp.stat(image);
    assert.equal(now.ino, before.ino);
    assert.equal(now.uid, before.uid);
    assert.equal(now.gid, before.gid);
    assert.equal(now.nlink, 1);
    assert.equal(readdirSync(tmpdir()).filter((n) => n.startsWith('vmrestore-guest-prep-')).length, boxesBefore);
    assert.equal((await new Ext4Volume(image, MiB).stat('/etc/netplan/90-vmrestore-azure-dhcp.yaml'))?.type, 'regular');
  });

  it('kills the child and its tools on timeout and on cancellation, handing the image back', async () => {
    const image = await ubuntuWithoutUfwMarker('killed');
    await assert.rejects(prepareGuestDiskIsolated({ osType: 'Linux', imagePath: image }, { timeoutMs: 300 }), (e: unknown) => {
      assert.ok(e instanceof RestoreError);
      assert.equal(e.type, 'GuestPreparation');
      assert.match(e.message, /guest preparation of Linux disk timed out after 300 ms; its process was killed/);
      return true;
    });
    assert.ok(existsSync(image));
    const ac = new AbortController();
    setTimeout(() => ac.abort(new Error('restore cancelled')), 500);
    await assert.rejects(prepareGuestDiskIsolated({ osType: 'Linux', imagePath: image }, { signal: ac.signal }), /restore cancelled/);
    assert.ok(existsSync(image));
    await new Promise((r) => setTimeout(r, 200));
    const left = readdirSync('/proc')
      .filter((p) => /^\d+$/.test(p))
      .filter((p) => {
        try {
          return readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('vmrestore-guest-prep-');
        } catch {
          return false;
        }
      });
    assert.deepEqual(left, [], 'no preparation process survives');
    // A later run on the same image still works.
    const r = await prepareGuestDiskIsolated({ osType: 'Linux', imagePath: image });
    assert.ok(r.changes.length > 0 || r.warnings.length > 0);
  });

  it(
    'prepares a Windows disk unprivileged, FUSE mount included (ntfs-3g is setuid root for this)',
    { skip: skipWithout(existsSync('/dev/fuse'), 'needs /dev/fuse') },
    async () => {
      await fsp.mkdir(join(dir, 'win'));
      const image = join(dir, 'win', 'disk.img');
      await buildWindowsDiskImage(image, { sizeBytes: 160 * MiB, scheme: 'gpt', hostname: 'iso01', usedMiB: 4 });
      // The installer is staged from the copy in the private directory, which must have the recorded digest.
      const installer = join(dir, 'win', 'WindowsAzureVmAgent.msi');
      await fsp.writeFile(installer, 'agent installer bytes');
      const sha256 = createHash('sha256').update('agent installer bytes').digest('hex');
      await assert.rejects(
        prepareGuestDiskIsolated({
          osType: 'Windows',
          imagePath: image,
          agentInstallerPath: installer,
          agentInstallerSha256: '0'.repeat(64),
        }),
        /azure\.windowsAgentInstaller: .* changed since the restore started/,
      );
      const r = await prepareGuestDiskIsolated({
        osType: 'Windows',
        imagePath: image,
        agentInstallerPath: installer,
        agentInstallerSha256: sha256,
      });
      if (asRoot) assert.equal(r.sandbox.uid, UNPRIVILEGED_ID);
      assert.equal(r.changes.length, 18);
      assert.ok(r.changes.some((c) => c.path === 'C:\\Windows\\AzureAgent\\WindowsAzureVmAgent.msi' && c.action === 'create'));
      assert.deepEqual(r.warnings, []);
      assert.equal(await readHiveValueFromDisk(image, 'SYSTEM', 'ControlSet001\\Control\\Terminal Server', 'fDenyTSConnections'), '0');
      assert.equal(
        (await readWindowsFileFromDisk(image, 'Windows/AzureAgent/WindowsAzureVmAgent.msi'))?.toString(),
        'agent installer bytes',
      );
    },
  );

  it('refuses a missing image or a symlinked image path', async () => {
    await assert.rejects(
      prepareGuestDiskIsolated({ osType: 'Linux', imagePath: join(dir, 'nope.img') }),
      /guest image .*nope\.img does not exist/,
    );
    const target = await ubuntuWithoutUfwMarker('linked');
    const linkPath = join(dir, 'link.img');
    await fsp.symlink(target, linkPath);
    await assert.rejects(prepareGuestDiskIsolated({ osType: 'Linux', imagePath: linkPath }), /is a symlink; refused/);
  });
});
