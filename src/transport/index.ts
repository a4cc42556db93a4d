import type { TransportMode } from '../domain/vsphere';
import { directNas } from './direct-nas';
import { directSan } from './direct-san';
import { hotadd } from './hotadd';
import { nbd } from './nbd';
import type { DiskTransport } from './transport';

export type { DiskTransport, DiskWriteJob, DiskWriteOutcome } from './transport';

/** The modes in the order `auto` tries them: direct storage access, then HotAdd, then network. */
export const TRANSPORT_ORDER: TransportMode[] = ['direct-san', 'direct-nas', 'hotadd', 'nbd'];

export const TRANSPORTS: Record<TransportMode, DiskTransport> = {
  'direct-san': directSan,
  'direct-nas': directNas,
  hotadd,
  nbd,
};
