import type { RepositoryConfig } from '../config/schema';
import { RemoteRepository } from './remote/client';
import { localRepository, type RepositorySource } from './source';

const opened = new WeakMap<RepositoryConfig, RepositorySource>();

/**
 * The repository a worker reads restores from: the data mover at `repository.url` when one is configured,
 * else the local `repository.path`. One per config, so all activities of a worker share one keep-alive agent.
 */
export function openRepository(repo: RepositoryConfig): RepositorySource {
  let source = opened.get(repo);
  if (!source) {
    source = repo.url ? RemoteRepository.fromConfig(repo) : localRepository(repo.path);
    opened.set(repo, source);
  }
  return source;
}
