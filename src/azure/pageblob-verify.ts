/** Verification of an uploaded VHD page blob: its footer, size and the page ranges actually written. */
import type { PageBlobClient } from '@azure/storage-blob';
import { footerProblems, parseVhdFooter, SECTOR_SIZE, VHD_FOOTER_SIZE, type VhdFooter, vhdVirtualSize } from './vhd';

/** A page range as listPageRanges reports it: inclusive byte offsets. */
export interface PageRange {
  start: number;
  end: number;
}

export interface VerifyUploadedVhdOptions {
  capacityBytes: number;
  /**
   * Where the source has data. When given, every page range must lie inside these (no zero data was
   * written) and every one of them must be covered (nothing was lost). Compared at 512-byte granularity.
   */
  expectedNonZeroRanges?: { offset: number; length: number }[];
  signal?: AbortSignal;
}

export interface VerifyUploadedVhdResult {
  ok: boolean;
  problems: string[];
  /** Written ranges, merged where adjacent. */
  pageRanges: PageRange[];
  footer: VhdFooter | null;
}

/** Merges inclusive ranges that overlap or touch. */
export function mergeRanges(ranges: PageRange[]): PageRange[] {
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  const out: PageRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end + 1) last.end = Math.max(last.end, r.end);
    else out.push({ start: r.start, end: r.end });
  }
  return out;
}

/** Parts of `a` not covered by `b`; both sorted, merged, inclusive. */
function subtractRanges(a: PageRange[], b: PageRange[]): PageRange[] {
  const out: PageRange[] = [];
  let j = 0;
  for (const r of a) {
    let cur = r.start;
    while (j < b.length && b[j].end < cur) j++;
    let k = j;
    while (cur <= r.end) {
      if (k >= b.length || b[k].start > r.end) {
        out.push({ start: cur, end: r.end });
        break;
      }
      if (b[k].start > cur) out.push({ start: cur, end: b[k].start - 1 });
      cur = Math.max(cur, b[k].end + 1);
      k++;
    }
  }
  return out;
}

function describe(ranges: PageRange[], max = 5): string {
  const shown = ranges.slice(0, max).map((r) => `[${r.start}, ${r.end + 1})`);
  return shown.join(', ') + (ranges.length > max ? ` and ${ranges.length - max} more` : '');
}

/**
 * Checks an uploaded VHD blob: size N MiB + 512, a valid fixed footer of the right size, nothing
 * written in the zero tail, and (optionally) written ranges matching the source's non-zero ranges.
 * Uses listPageRanges, whose ranges are inclusive; the deprecated getPageRanges is off by one.
 */
export async function verifyUploadedVhd(blobClient: PageBlobClient, opts: VerifyUploadedVhdOptions): Promise<VerifyUploadedVhdResult> {
  const problems: string[] = [];
  const virtualSize = vhdVirtualSize(opts.capacityBytes);
  const blobSize = virtualSize + VHD_FOOTER_SIZE;
  const signal = opts.signal;

  const props = await blobClient.getProperties({ abortSignal: signal });
  const size = props.contentLength ?? 0;
  if (props.blobType && props.blobType !== 'PageBlob') problems.push(`blob type is ${props.blobType}, not PageBlob`);
  if (size !== blobSize) problems.push(`blob size ${size} != expected ${blobSize} (${virtualSize} + 512)`);
  if (size % (1024 * 1024) !== VHD_FOOTER_SIZE) problems.push(`blob size ${size} is not N MiB + 512`);

  let footer: VhdFooter | null = null;
  if (size >= VHD_FOOTER_SIZE) {
    const tail = await blobClient.downloadToBuffer(size - VHD_FOOTER_SIZE, VHD_FOOTER_SIZE, { abortSignal: signal });
    footer = parseVhdFooter(tail);
    problems.push(...footerProblems(footer, virtualSize));
  }

  const raw: PageRange[] = [];
  for await (const r of blobClient.listPageRanges(0, undefined, { abortSignal: signal })) {
    raw.push({ start: r.start, end: r.end });
  }
  const pageRanges = mergeRanges(raw);

  const footerRange: PageRange = { start: virtualSize, end: blobSize - 1 };
  if (subtractRanges([footerRange], pageRanges).length > 0) problems.push('the footer page was never written');
  const dataRanges = subtractRanges(pageRanges, [footerRange]);
  const dataEnd = Math.ceil(opts.capacityBytes / SECTOR_SIZE) * SECTOR_SIZE;
  if (dataEnd < virtualSize) {
    const inTail = subtractRanges(dataRanges, [{ start: 0, end: dataEnd - 1 }]);
    if (inTail.length > 0) problems.push(`pages written past the disk capacity, in the zero tail: ${describe(inTail)}`);
  }

  if (opts.expectedNonZeroRanges) {
    const expected = mergeRanges(
      opts.expectedNonZeroRanges
        .filter((r) => r.length > 0)
        .map((r) => ({
          start: r.offset - (r.offset % SECTOR_SIZE),
          end: Math.ceil((r.offset + r.length) / SECTOR_SIZE) * SECTOR_SIZE - 1,
        })),
    );
    const missing = subtractRanges(expected, dataRanges);
    if (missing.length > 0) problems.push(`source data ranges not written: ${describe(missing)}`);
    const extra = subtractRanges(dataRanges, expected);
    if (extra.length > 0) problems.push(`pages written where the source is zero: ${describe(extra)}`);
  }

  return { ok: problems.length === 0, problems, pageRanges, footer };
}
