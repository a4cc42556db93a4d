/** Default task queue the worker polls; exported so parent workflows can start restores as children. */
export const TASK_QUEUE = 'vmrestore';

/** The task queue of vSphere proxy `proxy`: its worker (`vmrestore worker --proxy NAME`) writes the disks planned for it. */
export function proxyTaskQueue(taskQueue: string, proxy: string): string {
  return `${taskQueue}-proxy-${proxy}`;
}
