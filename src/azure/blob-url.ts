/**
 * Blob URLs carry their SAS token in the query string (`?sv=…&sig=…`), and a SAS is a bearer credential.
 * Every blob URL that is stored (plans, results, history), printed, logged or sent to ARM goes through
 * `blobUrlForRecord` first; free text that may quote a URL (SDK error messages, stack traces) goes through
 * `redactSasInText`.
 */

/** The blob URL without its query string (SAS token) or fragment. */
export function blobUrlForRecord(url: string): string {
  const cut = url.search(/[?#]/);
  return cut < 0 ? url : url.slice(0, cut);
}

const URL_WITH_QUERY = /\b(https?:\/\/[^\s?#'"<>]+)[?#][^\s'"<>]*/gi;
/** A SAS signature (or a whole SharedAccessSignature value) outside a URL, e.g. in a connection string. */
const BARE_SAS = /\b(SharedAccessSignature=)[^;\s'"]*|([?&;\s]|^)sig=[^&;\s'"]*/gi;

/** The text with every URL's query string removed and any stray SAS signature masked. */
export function redactSasInText(text: string): string {
  return text
    .replace(URL_WITH_QUERY, '$1')
    .replace(BARE_SAS, (_m, sas: string | undefined, lead: string | undefined) =>
      sas ? `${sas}[redacted]` : `${lead ?? ''}[redacted SAS]`,
    );
}

/** Whether the text still holds something that looks like a SAS signature. */
export function containsSas(text: string): boolean {
  return /(^|[?&;\s])sig=/i.test(text) || /SharedAccessSignature=[^;\s[]/i.test(text);
}
