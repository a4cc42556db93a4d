import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { FailureType, RestoreError } from '../../domain/errors';

/** One `deb` source of the machine's apt configuration. */
export interface AptSource {
  uri: string;
  suites: string[];
  components: string[];
  /** The file it came from, for error messages. */
  file: string;
}

/** Parses deb822 `.sources` stanzas (`Types: deb`, `URIs:`, `Suites:`, `Components:`); comments are skipped. */
export function parseDeb822Sources(text: string, file: string): AptSource[] {
  const out: AptSource[] = [];
  for (const stanza of text.split(/\n\s*\n/)) {
    const fields = new Map<string, string>();
    let last = '';
    for (const raw of stanza.split('\n')) {
      if (raw.startsWith('#') || raw.trim() === '') continue;
      if (/^\s/.test(raw) && last) {
        fields.set(last, `${fields.get(last)} ${raw.trim()}`);
        continue;
      }
      const m = /^([A-Za-z-]+):\s*(.*)$/.exec(raw);
      if (!m) continue;
      last = m[1].toLowerCase();
      fields.set(last, m[2].trim());
    }
    const types = (fields.get('types') ?? '').split(/\s+/);
    if (!types.includes('deb') || fields.get('enabled')?.toLowerCase() === 'no') continue;
    const words = (k: string) => (fields.get(k) ?? '').split(/\s+/).filter(Boolean);
    for (const uri of words('uris')) out.push({ uri, suites: words('suites'), components: words('components'), file });
  }
  return out;
}

/** Parses one-line `deb [options] URI suite component...` entries. */
export function parseOneLineSources(text: string, file: string): AptSource[] {
  const out: AptSource[] = [];
  for (const raw of text.split('\n')) {
    const line = raw
      .replace(/#.*/, '')
      .replace(/\[[^\]]*\]/, ' ')
      .trim();
    const [type, uri, suite, ...components] = line.split(/\s+/);
    if (type === 'deb' && uri && suite) out.push({ uri, suites: [suite], components, file });
  }
  return out;
}

/** Every `deb` source configured under an apt root (`/etc/apt` by default). */
export function readAptSources(aptDir = '/etc/apt'): AptSource[] {
  const out: AptSource[] = [];
  const main = path.join(aptDir, 'sources.list');
  if (existsSync(main)) out.push(...parseOneLineSources(readFileSync(main, 'utf8'), main));
  const dir = path.join(aptDir, 'sources.list.d');
  if (existsSync(dir)) {
    for (const name of readdirSync(dir).sort()) {
      const file = path.join(dir, name);
      if (name.endsWith('.sources')) out.push(...parseDeb822Sources(readFileSync(file, 'utf8'), file));
      else if (name.endsWith('.list')) out.push(...parseOneLineSources(readFileSync(file, 'utf8'), file));
    }
  }
  return out;
}

/**
 * The Debian mirror to bootstrap `suite` from: `VMRESTORE_DEBIAN_MIRROR` when set, otherwise the first
 * configured source that serves the suite's `main` component over HTTP(S).
 */
export function debianMirror(suite: string, sources: AptSource[] = readAptSources()): string {
  const explicit = process.env.VMRESTORE_DEBIAN_MIRROR;
  if (explicit) return explicit;
  const hit = sources.find((s) => /^https?:\/\//.test(s.uri) && s.suites.includes(suite) && s.components.includes('main'));
  if (!hit) {
    const seen = sources.map((s) => `${s.uri} ${s.suites.join(',')} (${s.file})`).join('; ') || 'none';
    throw new RestoreError(
      FailureType.Configuration,
      `no apt source serves Debian '${suite}' main over HTTP(S) (configured: ${seen}); set VMRESTORE_DEBIAN_MIRROR to a Debian mirror URL`,
    );
  }
  return hit.uri;
}
