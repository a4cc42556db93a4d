export { RemoteRepository, type RemoteRepositoryOptions } from './client';
export { startRepositoryServer, type RepositoryServer, type RepositoryServerOptions } from './server';
export { loadRepositoryToken } from './protocol';
