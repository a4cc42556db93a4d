// The one way from production code into src/lab/, and the one exception of the ESLint rule that forbids
// importing the lab: the CLI's `lab`, `demo`, `repo seed-demo` and `verify --guest` commands load the lab
// here, on demand, so no other command (and no worker) loads any of it. A lazy `require`, since tsx runs
// the CLI as CommonJS, where an `import()` of a TypeScript file does not resolve.
export type Lab = typeof import('../lab');
export type LabDemo = typeof import('../lab/demo');
export type LabGuests = typeof import('../lab/guests');

/** `lab up|status|down`. */
export async function loadLab(): Promise<Lab> {
  return require('../lab') as Lab;
}

/** `demo` (`npm start`) and `repo seed-demo`. */
export async function loadLabDemo(): Promise<LabDemo> {
  return require('../lab/demo') as LabDemo;
}

/** `verify --guest`: the lab's test guests, built on first use. */
export async function loadLabGuests(): Promise<LabGuests> {
  return require('../lab/guests') as LabGuests;
}

/** The names `verify --guest` accepts, for the usage text (the recipes alone, without building anything). */
export function labGuestNames(): string[] {
  return Object.keys((require('../lab/guests/recipes') as typeof import('../lab/guests/recipes')).GUEST_RECIPES);
}
