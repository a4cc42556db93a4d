import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import type { Client } from '@temporalio/client';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createMappedAzureActivities } from '../../src/activities/azure';
import { labConfig } from '../../src/lab/config';
import { labUp, readLabState } from '../../src/lab';
import { armLog, labArm } from '../helpers/azure';

/**
 * The helper appliance's start and deallocate activities against the lab's ARM simulator through the
 * real Azure SDK clients, run in MockActivityEnvironment (no worker): the VM's power state is read back
 * from ARM, and the request log since the test began shows each call is made only when needed.
 */
describe("the helper appliance's start and deallocate", { timeout: 120_000 }, () => {
  let acts: ReturnType<typeof createMappedAzureActivities>;
  let helper: { resourceGroup: string; vmName: string };

  before(async () => {
    await labUp();
    const config = labConfig(readLabState());
    const [first] = Object.values(config.azure?.helpers ?? {});
    assert.ok(first, 'the lab configures a helper appliance');
    helper = { resourceGroup: first.resourceGroup, vmName: first.vmName };
    // Power activities use ARM only; the Temporal client is for leases.
    acts = createMappedAzureActivities({ config, client: undefined as unknown as Client });
  });

  const powerState = async (): Promise<string | undefined> => {
    const view = await labArm().compute.virtualMachines.instanceView(helper.resourceGroup, helper.vmName);
    return view.statuses?.find((s) => s.code?.startsWith('PowerState/'))?.code;
  };
  /** ARM calls since `since` (a log sequence number) that change the helper's power. */
  const powerCalls = async (since: number): Promise<string[]> =>
    (await armLog())
      .filter((e) => e.seq > since && e.method === 'POST' && e.path.includes(`/virtualMachines/${helper.vmName}/`))
      .map((e) => e.path.split('/').at(-1)!);
  const lastSeq = async (): Promise<number> => Math.max(0, ...(await armLog()).map((e) => e.seq));

  it('deallocates the helper, then starts it, each once, and does nothing when it is already in that state', async () => {
    const since = await lastSeq();
    const run = (fn: (a: typeof helper) => Promise<void>) => new MockActivityEnvironment().run(fn, helper);

    await run(acts.deallocateAzureVm);
    assert.equal(await powerState(), 'PowerState/deallocated');
    await run(acts.deallocateAzureVm);
    await run(acts.powerOnAzureVm);
    assert.equal(await powerState(), 'PowerState/running');
    await run(acts.powerOnAzureVm);

    const calls = await powerCalls(since);
    // The first deallocate may find the helper already off (a previous test left it so): then it sends nothing.
    assert.deepEqual(
      calls.filter((c) => c === 'start'),
      ['start'],
      `power calls: ${calls.join(', ')}`,
    );
    assert.ok(calls.filter((c) => c === 'deallocate').length <= 1, `power calls: ${calls.join(', ')}`);
    await run(acts.deallocateAzureVm);
    assert.equal(await powerState(), 'PowerState/deallocated');
    assert.deepEqual((await powerCalls(since)).slice(-1), ['deallocate']);
  });

  it('names the VM when it does not exist', async () => {
    const missing = { resourceGroup: helper.resourceGroup, vmName: 'no-such-helper' };
    await assert.rejects(new MockActivityEnvironment().run(acts.powerOnAzureVm, missing), /no-such-helper/);
  });
});
