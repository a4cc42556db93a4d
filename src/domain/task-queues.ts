/** Default task queue the worker polls; exported so parent workflows can start restores as children. */
export const TASK_QUEUE = 'vmrestore';
