import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { workflowCode, workflowCodeDigest } from '../../src/workflow-bundle';

describe('workflow bundle cache', () => {
  it('keys the bundle by every source file: a changed or added file gives a new digest', async () => {
    const root = mkdtempSync(path.join(tmpdir(), 'wfbundle-'));
    try {
      mkdirSync(path.join(root, 'workflows'));
      mkdirSync(path.join(root, 'domain'));
      const index = path.join(root, 'workflows', 'index.ts');
      writeFileSync(index, 'export * from "../domain/a";\n');
      writeFileSync(path.join(root, 'domain', 'a.ts'), 'export const a = 1;\n');
      const first = await workflowCodeDigest(index);
      assert.equal(await workflowCodeDigest(index), first, 'same files, same digest');
      writeFileSync(path.join(root, 'domain', 'a.ts'), 'export const a = 2;\n');
      const changed = await workflowCodeDigest(index);
      assert.notEqual(changed, first, 'a file the workflows import changed');
      writeFileSync(path.join(root, 'domain', 'b.ts'), 'export const b = 1;\n');
      assert.notEqual(await workflowCodeDigest(index), changed, 'a file was added');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('bundles as before when workflow interceptors or plugins change the bundle', async () => {
    const workflowsPath = require.resolve('../../src/workflows');
    assert.deepEqual(await workflowCode(workflowsPath, { interceptors: { workflowModules: ['x'] } }), { workflowsPath });
    assert.deepEqual(await workflowCode(workflowsPath, { plugins: [{ name: 'p' }] }), { workflowsPath });
  });
});
