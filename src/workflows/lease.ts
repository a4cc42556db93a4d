import {
  ApplicationFailure,
  allHandlersFinished,
  condition,
  continueAsNew,
  patched,
  proxyActivities,
  setHandler,
  sleep,
  workflowInfo,
} from '@temporalio/workflow';
import type { AzureActivities } from '../activities/azure';
import type { SweepActivities } from '../activities/sweep';
import { acquireLease, DEFAULT_HOLDER_CHECK_MS, leaseStateQuery, releaseLease, type LeaseState } from '../domain/lease';
import { controlOptions } from './activity-options';

const power = proxyActivities<AzureActivities>(controlOptions('lease'));
const holders = proxyActivities<SweepActivities>(controlOptions('lease'));

/**
 * One entity workflow per shared VM (Azure proxy or helper appliance). Acquire returns once the VM runs;
 * when the last holder has released and the idle timeout passes without a new acquire, it deallocates
 * the VM. Concurrent restores therefore never power it off under each other.
 *
 * Holders that name their workflow execution are checked on a timer: one whose execution has closed
 * (terminated, timed out, or failed without releasing) is dropped with its reserved slots, after what it
 * left attached to a helper appliance has been detached, so the appliance still powers off.
 */
export async function resourceLease(initial: LeaseState): Promise<void> {
  const state: LeaseState = { ...initial, holders: [...initial.holders], reserved: { ...initial.reserved } };
  const reserved = state.reserved!;
  const owners = (state.owners = { ...initial.owners });
  let transition: Promise<void> | undefined;
  setHandler(leaseStateQuery, () => state);
  const slotsInUse = (): number => Object.values(reserved).reduce((a, n) => a + n, 0);

  setHandler(acquireLease, async (holder, request) => {
    const want = request?.slots ?? 0;
    if (!state.holders.includes(holder)) {
      const capacity = request?.capacity ?? state.target.slots;
      if (want > 0 && capacity !== undefined) {
        if (want > capacity) {
          throw ApplicationFailure.nonRetryable(
            state.target.kind === 'limit'
              ? `${holder} needs ${want} slots of the limit on ${state.target.vmName}, which allows ${capacity}`
              : `${holder} needs ${want} data-disk slots on ${state.target.kind} VM '${state.target.vmName}', which has ${capacity}`,
            'LeaseCapacity',
          );
        }
        // Wait for other holders to free enough slots; a retried acquire may have won meanwhile. Checked again
        // after each wake-up: one release wakes every waiter at once, and only the first may take the slots.
        const free = () => state.holders.includes(holder) || slotsInUse() + want <= capacity;
        await condition(free);
        while (!free()) await condition(free);
      }
      if (!state.holders.includes(holder)) {
        state.holders.push(holder);
        if (want > 0) reserved[holder] = want;
      }
    }
    if (request?.powerOn === false) {
      if (request.owner) owners[holder] = request.owner;
      return { poweredOn: state.poweredOn, powerOns: state.powerOns };
    }
    // Wait out a power-off in progress, then power on once for everyone waiting.
    while (transition) await transition;
    let poweringOn: Promise<void> | undefined;
    if (!state.poweredOn) {
      poweringOn = transition = (async () => {
        await power.powerOnAzureVm({ resourceGroup: state.target.resourceGroup, vmName: state.target.vmName });
        state.poweredOn = true;
        state.powerOns++;
      })();
    }
    // The owner is recorded only once the power-on is scheduled: it wakes the holder check, whose timer
    // must follow this handler's command whether or not the handler waited above. A worker starting cold
    // may deliver the update together with older events (so the handler waits for the power-off), and a
    // later replay alone (so it does not); with the owner set earlier, the two would order the timer and
    // the power-on differently, which replay rejects as nondeterminism.
    if (request?.owner) owners[holder] = request.owner;
    if (poweringOn) {
      try {
        await poweringOn;
      } finally {
        transition = undefined;
      }
    }
    return { poweredOn: state.poweredOn, powerOns: state.powerOns };
  });

  const drop = (holder: string): void => {
    state.holders = state.holders.filter((h) => h !== holder);
    delete reserved[holder];
    delete owners[holder];
  };
  setHandler(releaseLease, (holder) => {
    drop(holder);
    return { holders: state.holders.length };
  });

  // Holders that died without releasing: checked while any holder names its execution.
  const watched = () => state.holders.filter((h) => owners[h] !== undefined).map((holder) => ({ holder, owner: owners[holder] }));
  // The holders to check are those watched when the interval began. What happens after the timer must not
  // depend on updates the same activation brings: a worker replaying cold may see the timer's firing and a
  // later acquire or release in one activation, where the original execution saw them in two.
  const snapshotAtStart = patched('lease-holder-check-snapshot');
  const checkHolders = async (): Promise<void> => {
    for (;;) {
      await condition(() => watched().length > 0);
      const atStart = watched();
      await sleep(state.target.holderCheckMs ?? DEFAULT_HOLDER_CHECK_MS);
      const list = snapshotAtStart ? atStart : watched();
      if (list.length === 0) continue;
      try {
        const closed = await holders.reapLeaseHolders({ target: state.target, holders: list });
        for (const h of closed) {
          if (!state.holders.includes(h)) continue;
          drop(h);
          state.droppedHolders = (state.droppedHolders ?? 0) + 1;
        }
      } catch {
        // Checked again at the next interval.
      }
    }
  };
  void checkHolders();

  for (;;) {
    await condition(() => state.holders.length === 0 && !transition);
    if (state.poweredOn) {
      const reacquired = await condition(() => state.holders.length > 0, state.target.idleTimeoutMs);
      if (!reacquired && !transition) {
        transition = (async () => {
          await power.deallocateAzureVm({ resourceGroup: state.target.resourceGroup, vmName: state.target.vmName });
          state.poweredOn = false;
          state.powerOffs++;
        })();
        try {
          await transition;
        } finally {
          transition = undefined;
        }
      }
    } else {
      await condition(() => state.holders.length > 0 || workflowInfo().continueAsNewSuggested);
    }
    if (workflowInfo().continueAsNewSuggested && state.holders.length === 0 && !transition) {
      await condition(allHandlersFinished);
      await continueAsNew<typeof resourceLease>(state);
    }
  }
}
