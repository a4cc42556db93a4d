export {
  VSphereClient,
  type CreateVmSpec,
  type Datacenter,
  type DatacenterArg,
  type DatastoreInfo,
  type FolderInfo,
  type HostInfo,
  type NewVmDisk,
  type NewVmNic,
  type ResourcePoolInfo,
} from './finder';
export { VSphereSession, type AboutInfo, type ConnectOptions } from './session';
export { VSphereNotFoundError } from './errors';
export { Vm, type AttachDiskOptions, type PowerState, type SnapshotInfo, type VmConfigInfo } from './vm';
export { Task, type PropertyReader, type TaskInfo, type TaskState, type TaskWaitOptions } from './task';
export type { NetworkInfo, VmDiskInfo, VmNicInfo } from './devices';
export { VSphereFaultError, isFault, type CallOptions, type MoRef, type VimObject, type VimValue } from './soap';
export type { ObjectProperties, PropertySelection, Traversal } from './properties';
export { serverThumbprint, type TlsOptions } from './tls';
export {
  datastoreFileUrl,
  datastorePathToUrl,
  flatFileName,
  formatDatastorePath,
  parseDatastorePath,
  type DatastorePath,
  type UrlBase,
} from './datastore-path';
export {
  downloadDatastoreFile,
  uploadDatastoreFile,
  type DatastoreDownload,
  type DatastoreFileRef,
  type DownloadOptions,
  type UploadOptions,
} from './datastore-http';
