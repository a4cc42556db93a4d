import { list, obj, ref, refArg, str, typedArg, type MoRef, type VimSoap, type VimValue } from './soap';

/** One object's requested properties, as RetrievePropertiesEx returns them. */
export interface ObjectProperties {
  ref: MoRef;
  props: Record<string, VimValue>;
  /** Paths that could not be read, with the fault type (e.g. a VM without config). */
  missing: Record<string, string>;
}

/** Properties to read for one managed object type. */
export interface PropertySelection {
  type: string;
  paths: string[];
}

/** A traversal from the start object along one property, e.g. ContainerView.view or Datacenter.datastore. */
export interface Traversal {
  type: string;
  path: string;
}

const PAGE_SIZE = 500;

/**
 * RetrievePropertiesEx over `objects`, following continuation tokens until every page is read.
 * With a `traversal` the start objects are skipped and only the objects it leads to are returned.
 */
export async function retrieveProperties(
  soap: VimSoap,
  propertyCollector: MoRef,
  objects: MoRef[],
  selections: PropertySelection[],
  traversal?: Traversal,
): Promise<ObjectProperties[]> {
  if (objects.length === 0) return [];
  const objectSet = objects.map((o) => {
    const spec: Record<string, unknown> = { obj: refArg(o), skip: traversal ? 'true' : 'false' };
    if (traversal) {
      spec.selectSet = [typedArg('TraversalSpec', { name: 'traverse', type: traversal.type, path: traversal.path, skip: 'false' })];
    }
    return spec;
  });
  const specSet = {
    propSet: selections.map((s) => ({ type: s.type, all: 'false', pathSet: s.paths })),
    objectSet,
  };
  const out: ObjectProperties[] = [];
  let page = obj(
    await soap.call('RetrievePropertiesEx', {
      _this: refArg(propertyCollector),
      specSet: [specSet],
      options: { maxObjects: PAGE_SIZE },
    }),
  );
  for (;;) {
    for (const o of list(page.objects)) out.push(toObjectProperties(obj(o)));
    const token = str(page.token);
    if (!token) return out;
    page = obj(await soap.call('ContinueRetrievePropertiesEx', { _this: refArg(propertyCollector), token }));
  }
}

function toObjectProperties(content: Record<string, VimValue | undefined>): ObjectProperties {
  const props: Record<string, VimValue> = {};
  for (const p of list(content.propSet)) {
    const dp = obj(p);
    props[str(dp.name)] = dp.val ?? '';
  }
  const missing: Record<string, string> = {};
  for (const m of list(content.missingSet)) {
    const mp = obj(m);
    missing[str(mp.path)] = obj(obj(mp.fault).fault).$type ?? 'unknown';
  }
  return { ref: ref(content.obj) ?? { type: '', value: '' }, props, missing };
}
