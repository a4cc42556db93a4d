import { Connection } from '@temporalio/client';
import { temporal as proto } from '@temporalio/proto';
import { SEARCH_ATTRIBUTES } from '../domain/search-attributes';

/** Which Temporal the lab runs: the CLI's dev server, or the server built from source on PostgreSQL. */
export type TemporalKind = 'dev' | 'cluster';

export interface LabTemporal {
  pid: number;
  port: number;
  uiPort: number;
  address: string;
  namespace: string;
  ui: string;
  /** The CLI's dev server (absent in state written before clusters existed), or the PostgreSQL cluster. */
  kind?: TemporalKind;
}

export async function temporalReady(address: string, namespace: string): Promise<boolean> {
  const conn = await Connection.connect({ address, connectTimeout: 1000 });
  try {
    await conn.workflowService.describeNamespace({ namespace });
    return true;
  } finally {
    await conn.close();
  }
}

/** Registers the search attributes the workflows set that the server does not know yet; returns those added. */
export async function ensureSearchAttributes(address: string, namespace: string): Promise<string[]> {
  const conn = await Connection.connect({ address, connectTimeout: 2000 });
  try {
    const known = (await conn.operatorService.listSearchAttributes({ namespace })).customAttributes ?? {};
    const missing = Object.keys(SEARCH_ATTRIBUTES).filter((k) => !(k in known));
    if (missing.length === 0) return [];
    const KEYWORD = proto.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
    await conn.operatorService.addSearchAttributes({
      namespace,
      searchAttributes: Object.fromEntries(missing.map((k) => [k, KEYWORD])),
    });
    return missing;
  } finally {
    await conn.close();
  }
}
