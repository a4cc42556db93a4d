import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { defaultPayloadConverter } from '@temporalio/common';
import type { LeaseState, LeaseTarget } from '../../src/domain/lease';
import { acquireLease, leaseStateQuery, releaseLease, resourceLease } from '../../src/workflows';
import {
  historyEvents,
  scheduledActivities,
  startWorkflowTestEnv,
  until,
  type HistoryEvent,
  type WorkflowTestEnv,
} from '../helpers/workflow-env';

/**
 * The lease entity workflow on a real Temporal server with timers set to seconds: the helper appliance
 * is started once for its holders and deallocated after the idle timeout, and a long-lived lease
 * continues as new with its state. The server suggests continue-as-new after a few events here
 * (dynamic config), where a production server does after thousands.
 */

const SUGGEST_CONTINUE_AS_NEW_AFTER = 60;

const powerActivities = {
  powerOnAzureVm: async (): Promise<void> => {},
  deallocateAzureVm: async (): Promise<void> => {},
  reapLeaseHolders: async (): Promise<string[]> => [],
};

const helper = (name: string, idleTimeoutMs: number): LeaseTarget => ({
  kind: 'helper',
  name,
  resourceGroup: 'rg-restore',
  vmName: `helper-${name}`,
  idleTimeoutMs,
});
const initial = (target: LeaseTarget): LeaseState => ({ target, holders: [], poweredOn: false, powerOns: 0, powerOffs: 0 });

const eventIds = (events: HistoryEvent[], pick: (e: HistoryEvent) => unknown) => events.filter(pick).map((e) => Number(e.eventId));

describe('the lease of a helper appliance, read from its history', { timeout: 180_000 }, () => {
  let t: WorkflowTestEnv;
  before(async () => {
    t = await startWorkflowTestEnv(['--dynamic-config-value', `limit.historyCount.suggestContinueAsNew=${SUGGEST_CONTINUE_AS_NEW_AFTER}`]);
  });
  after(async () => {
    await t?.teardown();
  });

  it('starts the helper once for two holders and deallocates it one idle timeout after the last release', async () => {
    const target = helper('idle', 1500);
    await t.withWorker(powerActivities, async (taskQueue) => {
      const lease = await t.env.client.workflow.start(resourceLease, { taskQueue, workflowId: 'lease-idle', args: [initial(target)] });
      const [a, b] = await Promise.all([
        lease.executeUpdate(acquireLease, { args: ['restore-a'] }),
        lease.executeUpdate(acquireLease, { args: ['restore-b'] }),
      ]);
      assert.deepEqual(
        [a, b],
        [
          { poweredOn: true, powerOns: 1 },
          { poweredOn: true, powerOns: 1 },
        ],
      );
      await lease.executeUpdate(releaseLease, { args: ['restore-a'] });
      await lease.executeUpdate(releaseLease, { args: ['restore-b'] });
      const off = await until('the helper deallocated', async () => {
        const s = await lease.query(leaseStateQuery);
        return s.poweredOn ? undefined : s;
      });
      assert.equal(off.powerOffs, 1);

      const events = await historyEvents(lease);
      const acts = scheduledActivities(events);
      assert.deepEqual(
        acts.map((x) => [x.type, x.input[0]]),
        [
          ['powerOnAzureVm', { resourceGroup: 'rg-restore', vmName: 'helper-idle' }],
          ['deallocateAzureVm', { resourceGroup: 'rg-restore', vmName: 'helper-idle' }],
        ],
      );
      // The idle timer starts after the last release completed, with the target's timeout, and fires.
      const lastRelease = Math.max(...eventIds(events, (e) => e.workflowExecutionUpdateCompletedEventAttributes));
      const timers = events.filter((e) => e.timerStartedEventAttributes && Number(e.eventId) > lastRelease);
      assert.equal(timers.length, 1, 'one idle timer after the last release');
      assert.equal(Number(timers[0].timerStartedEventAttributes!.startToFireTimeout!.seconds ?? 0), 1);
      assert.equal(timers[0].timerStartedEventAttributes!.startToFireTimeout!.nanos, 500_000_000);
      const fired = events.find((e) => e.timerFiredEventAttributes?.startedEventId?.toString() === timers[0].eventId!.toString());
      assert.ok(fired, 'the idle timer fired');
      assert.ok(Number(fired.eventId) < acts[1].eventId, 'deallocated after the idle timer fired');
      await lease.terminate('test done');
    });
  });

  it('keeps the helper running when a holder acquires again within the idle timeout', async () => {
    const target = helper('busy', 10 * 60_000);
    await t.withWorker(powerActivities, async (taskQueue) => {
      const lease = await t.env.client.workflow.start(resourceLease, { taskQueue, workflowId: 'lease-busy', args: [initial(target)] });
      await lease.executeUpdate(acquireLease, { args: ['restore-a'] });
      await lease.executeUpdate(releaseLease, { args: ['restore-a'] });
      // The idle timer is running once the release is processed: the next acquire lands inside it.
      await until('the idle timer started', async () => {
        const events = await historyEvents(lease);
        return events.some((e) => e.timerStartedEventAttributes) ? true : undefined;
      });
      const again = await lease.executeUpdate(acquireLease, { args: ['restore-b'] });
      assert.deepEqual(again, { poweredOn: true, powerOns: 1 });
      const events = await historyEvents(lease);
      assert.deepEqual(
        scheduledActivities(events).map((x) => x.type),
        ['powerOnAzureVm'],
      );
      assert.equal(eventIds(events, (e) => e.timerFiredEventAttributes).length, 0, 'the idle timer never fired');
      await lease.terminate('test done');
    });
  });

  it('continues as new once the server suggests it, carrying holders-free state and counters into the new run', async () => {
    const target = helper('long', 500);
    await t.withWorker(powerActivities, async (taskQueue) => {
      const lease = await t.env.client.workflow.start(resourceLease, { taskQueue, workflowId: 'lease-long', args: [initial(target)] });
      const firstRunId = lease.firstExecutionRunId;
      await lease.executeUpdate(acquireLease, { args: ['restore-0'] });
      await lease.executeUpdate(releaseLease, { args: ['restore-0'] });
      await until('the first power-off', async () => ((await lease.query(leaseStateQuery)).powerOffs === 1 ? true : undefined));
      // Reservations without power-on grow the history without timers, until the server suggests a new run.
      const latest = t.env.client.workflow.getHandle('lease-long');
      const newRunId = await until(
        'a new run of the lease',
        async () => {
          const { runId } = await latest.describe();
          if (runId !== firstRunId) return runId;
          await latest.executeUpdate(acquireLease, { args: ['reserve', { powerOn: false }] });
          await latest.executeUpdate(releaseLease, { args: ['reserve'] });
          return undefined;
        },
        60_000,
      );
      const first = await t.env.client.workflow.getHandle('lease-long', firstRunId).describe();
      assert.equal(first.status.name, 'CONTINUED_AS_NEW');
      assert.ok(first.historyLength >= SUGGEST_CONTINUE_AS_NEW_AFTER, `first run had ${first.historyLength} events`);

      // The new run starts from the state the first one ended with.
      const events = await historyEvents(t.env.client.workflow.getHandle('lease-long', newRunId));
      const started = events[0].workflowExecutionStartedEventAttributes!;
      const input = defaultPayloadConverter.fromPayload(started.input!.payloads![0]) as LeaseState;
      assert.equal(started.continuedExecutionRunId, firstRunId);
      assert.deepEqual(input.target, target);
      assert.deepEqual([input.holders, input.poweredOn, input.powerOns, input.powerOffs], [[], false, 1, 1]);

      // And it serves holders as the first did.
      const on = await latest.executeUpdate(acquireLease, { args: ['restore-1'] });
      assert.deepEqual(on, { poweredOn: true, powerOns: 2 });
      assert.deepEqual((await latest.query(leaseStateQuery)).holders, ['restore-1']);
      await latest.terminate('test done');
    });
  });
});
