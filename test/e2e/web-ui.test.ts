import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { readLabState } from '../../src/lab';
import { startVSphereRestore } from '../../src/client/restore';
import type { VSphereClient } from '../../src/vsphere';
import type { TestEnv, WorkerProcess } from '../helpers/env';
import { closeVSphereLab, openVSphereLab } from '../helpers/vsphere';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
let env: TestEnv;
let worker: WorkerProcess;
let browser: Browser;
let vs: VSphereClient;

describe('Temporal Web UI shows restores', () => {
  before(async () => {
    assert.ok(existsSync(CHROMIUM), `chromium not found at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
    ({ env, worker, vs } = await openVSphereLab('webui'));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  after(async () => {
    await browser?.close();
    await closeVSphereLab({ env, worker, vs });
  });

  it('lists a finished restore by its RestoreVm attribute and shows its summary', async () => {
    const vmName = `t-ui-${Date.now().toString(36)}`;
    const handle = await startVSphereRestore(
      env.client,
      { restorePointId: env.demo['demo-thick'], vmName, transport: 'nbd' },
      { taskQueue: env.taskQueue },
    );
    await handle.result();
    const ui = readLabState().temporal!.ui;
    const page = await browser.newPage();
    // Visibility is eventually consistent: retry the search until the UI lists the workflow.
    const query = encodeURIComponent(`RestoreVm="${vmName}"`);
    let listed = false;
    for (let i = 0; i < 20 && !listed; i++) {
      await page.goto(`${ui}/namespaces/default/workflows?query=${query}`, { waitUntil: 'networkidle' });
      listed = (await page.locator(`a:has-text("${handle.workflowId}")`).count()) > 0;
      if (!listed) await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(listed, `the UI lists ${handle.workflowId} for query RestoreVm="${vmName}"`);
    await page.goto(`${ui}/namespaces/default/workflows/${encodeURIComponent(handle.workflowId)}`, { waitUntil: 'networkidle' });
    // The page renders in a headless browser that shares two cores with the other lane's restores and boots.
    await page.getByText('Completed', { exact: false }).first().waitFor({ timeout: 60_000 });
    // The summary and the current details are on the User Metadata tab (History is the page's first tab).
    await page.getByText('User Metadata', { exact: true }).first().click({ timeout: 60_000 });
    await page.getByText('Current Details', { exact: false }).first().waitFor({ timeout: 60_000 });
    // The UI renders the summary's and details' markdown in frames of their own.
    const summary = `Restore ${vmName} to vSphere`;
    const framesWith = async (text: string) =>
      (await Promise.all(page.frames().map((f) => f.content().catch(() => '')))).filter((c) => c.includes(text)).length;
    let shown = 0;
    for (const deadline = Date.now() + 60_000; shown === 0 && Date.now() < deadline; ) {
      shown = await framesWith(summary);
      if (shown === 0) await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(shown > 0, `the User Metadata tab shows the summary '${summary}'`);
    const body = await page.content();
    assert.ok(body.includes(vmName));
    await page.screenshot({ path: path.join(os.tmpdir(), 'vmrestore-ui.png') });
    const dc = await vs.datacenter('DC0');
    await (await vs.findVmByName(dc, vmName))?.destroy();
  });
});
