import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const RestoreKind = defineSearchAttributeKey('RestoreKind', SearchAttributeType.KEYWORD);
export const RestoreVm = defineSearchAttributeKey('RestoreVm', SearchAttributeType.KEYWORD);
export const RestorePhaseKey = defineSearchAttributeKey('RestorePhase', SearchAttributeType.KEYWORD);
export const RestoreTarget = defineSearchAttributeKey('RestoreTarget', SearchAttributeType.KEYWORD);
/** The restore id that tags what a restore creates; the sweeper finds a resource's workflow by it. */
export const RestoreIdKey = defineSearchAttributeKey('RestoreId', SearchAttributeType.KEYWORD);

/** passed | failed | skipped: the restore's boot verification. */
export const RestoreVerified = defineSearchAttributeKey('RestoreVerified', SearchAttributeType.KEYWORD);

/** Registered on the Temporal server by the lab (and by operators for real clusters). */
export const SEARCH_ATTRIBUTES: Record<string, 'Keyword'> = {
  RestoreKind: 'Keyword',
  RestoreVm: 'Keyword',
  RestorePhase: 'Keyword',
  RestoreTarget: 'Keyword',
  RestoreId: 'Keyword',
  RestoreVerified: 'Keyword',
};
