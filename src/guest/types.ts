/**
 * One edit guest preparation made inside a disk image, kept in the activity result so a restore can
 * show exactly what it changed. Content is text; large files are trimmed (see trimForChange), symlinks
 * read as `-> target`, and null means the path did not exist before / was removed after.
 */
export interface GuestChange {
  path: string;
  before: string | null;
  after: string | null;
  description: string;
}

/** Files up to this size are recorded in full; larger ones are cut with a marker. */
export const CHANGE_CONTENT_LIMIT = 8 * 1024;

export function trimForChange(content: string | null): string | null {
  if (content === null || content.length <= CHANGE_CONTENT_LIMIT) return content;
  return `${content.slice(0, CHANGE_CONTENT_LIMIT)}\n[... ${content.length - CHANGE_CONTENT_LIMIT} more characters not recorded]`;
}
