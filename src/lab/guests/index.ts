export * from './build';
export * from './recipes';
export { debianMirror, readAptSources } from './mirror';
export { guestVmJson } from './demo-vm';
