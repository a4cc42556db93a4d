import type * as http from 'node:http';
import { FailureType, RestoreError } from '../domain/errors';
import { retrieveProperties, type ObjectProperties, type PropertySelection, type Traversal } from './properties';
import { VSphereFaultError, VimSoap, isFault, mustRef, obj, ref, refArg, str, type CallOptions, type MoRef, type VimValue } from './soap';
import { Task } from './task';
import { createAgent, type TlsOptions } from './tls';

export interface ConnectOptions extends TlsOptions {
  /** `https://vcenter.example.com` or `…/sdk`; `user:password@` in the URL is used when no username is given. */
  url: string | URL;
  username?: string;
  password?: string;
  signal?: AbortSignal;
  /** Per-SOAP-call timeout. Default 120 s. */
  requestTimeoutMs?: number;
}

export interface AboutInfo {
  fullName: string;
  /** 'VirtualCenter' or 'HostAgent' (a standalone ESXi). */
  apiType: string;
  apiVersion: string;
  instanceUuid: string;
}

/** The service instance's managers this session talks to. */
export interface ServiceContent {
  rootFolder: MoRef;
  propertyCollector: MoRef;
  viewManager: MoRef;
  searchIndex: MoRef;
  sessionManager: MoRef;
  about: AboutInfo;
}

/** What a login yields: the SOAP channel, the endpoint without credentials, the service content, the user. */
export type SessionParts = [soap: VimSoap, url: URL, content: ServiceContent, username: string];

/**
 * A logged-in vSphere (vCenter or ESXi) session over SOAP: raw calls, tasks, property reads and container
 * views. The typed objects ({@link Task}, Vm) work through it; the finder (VSphereClient) builds on it.
 */
export class VSphereSession {
  private loggedIn = true;

  protected constructor(
    private readonly soap: VimSoap,
    /** The SDK endpoint, e.g. https://vcenter/sdk, without credentials. */
    readonly url: URL,
    protected readonly content: ServiceContent,
    readonly username: string,
  ) {}

  /** Logs in; subclasses construct themselves from the parts (see VSphereClient.connect). */
  protected static async login(opts: ConnectOptions): Promise<SessionParts> {
    const url = new URL(opts.url);
    const username = opts.username ?? decodeURIComponent(url.username);
    const password = opts.password ?? decodeURIComponent(url.password);
    url.username = '';
    url.password = '';
    if (url.pathname === '' || url.pathname === '/') url.pathname = '/sdk';
    if (!username) {
      throw new RestoreError(FailureType.InvalidRequest, `no username given for vSphere at ${url.href}`);
    }
    const agent = createAgent(url, opts);
    try {
      const soap = await VimSoap.create(url.href, agent, opts.requestTimeoutMs ?? 120_000);
      const sc = obj(
        await soap.call(
          'RetrieveServiceContent',
          { _this: refArg({ type: 'ServiceInstance', value: 'ServiceInstance' }) },
          { signal: opts.signal, context: url.host },
        ),
      );
      const about = obj(sc.about);
      const content: ServiceContent = {
        rootFolder: mustRef(sc.rootFolder, 'rootFolder'),
        propertyCollector: mustRef(sc.propertyCollector, 'propertyCollector'),
        viewManager: mustRef(sc.viewManager, 'viewManager'),
        searchIndex: mustRef(sc.searchIndex, 'searchIndex'),
        sessionManager: mustRef(sc.sessionManager, 'sessionManager'),
        about: {
          fullName: str(about.fullName),
          apiType: str(about.apiType),
          apiVersion: str(about.apiVersion),
          instanceUuid: str(about.instanceUuid),
        },
      };
      await soap.call(
        'Login',
        { _this: refArg(content.sessionManager), userName: username, password },
        { signal: opts.signal, context: `${url.host} as '${username}'` },
      );
      return [soap, url, content, username];
    } catch (err) {
      agent.destroy();
      throw err;
    }
  }

  get about(): AboutInfo {
    return this.content.about;
  }

  /** False once the session has expired or was logged out, e.g. after a vCenter restart. */
  async isSessionActive(): Promise<boolean> {
    if (!this.loggedIn) return false;
    try {
      const p = await this.getProperties(this.content.sessionManager, ['currentSession']);
      return str(obj(p.currentSession).key) !== '';
    } catch (err) {
      if (isFault(err, 'NotAuthenticated')) return false;
      throw err;
    }
  }

  /** `Cookie` header value of this session, for datastore HTTP transfers. */
  get sessionCookie(): string {
    return this.soap.sessionCookie ?? '';
  }

  /** The connection pool with this client's TLS policy; file transfers must use it too. */
  get agent(): http.Agent {
    return this.soap.agent;
  }

  async logout(): Promise<void> {
    if (!this.loggedIn) return;
    this.loggedIn = false;
    try {
      await this.soap.call('Logout', { _this: refArg(this.content.sessionManager) });
    } catch (err) {
      if (!isFault(err, 'NotAuthenticated')) throw err;
    } finally {
      this.soap.agent.destroy();
    }
  }

  /** Raw vim25 call, for operations without a wrapper. The operation must be in vim25.wsdl. */
  call(method: string, args: Record<string, unknown>, opts?: CallOptions): Promise<VimValue> {
    return this.soap.call(method, args, opts);
  }

  /** Starts a `*_Task` method and wraps the task it returns. */
  async startTask(method: string, args: Record<string, unknown>, target: string): Promise<Task> {
    const taskRef = ref(await this.soap.call(method, args, { context: target }));
    if (!taskRef) throw new VSphereFaultError('InvalidResponse', `${method} returned no task (${target})`);
    return new Task(this, taskRef, method, target);
  }

  async retrieve(objects: MoRef[], selections: PropertySelection[], traversal?: Traversal): Promise<ObjectProperties[]> {
    return retrieveProperties(this.soap, this.content.propertyCollector, objects, selections, traversal);
  }

  /** Properties of one object; a deleted object raises VSphereFaultError 'ManagedObjectNotFound'. */
  async getProperties(target: MoRef, paths: string[]): Promise<Record<string, VimValue>> {
    const [found] = await this.retrieve([target], [{ type: target.type, paths }]);
    return found?.props ?? {};
  }

  /** Objects of `types` anywhere below `container`, through a ContainerView. */
  async findObjects(container: MoRef, types: string[], selections: PropertySelection[]): Promise<ObjectProperties[]> {
    const view = ref(
      await this.soap.call('CreateContainerView', {
        _this: refArg(this.content.viewManager),
        container: refArg(container),
        type: types,
        recursive: 'true',
      }),
    );
    if (!view) throw new VSphereFaultError('InvalidResponse', 'CreateContainerView returned no view');
    try {
      return await this.retrieve([view], selections, { type: 'ContainerView', path: 'view' });
    } finally {
      await this.soap.call('DestroyView', { _this: refArg(view) }).catch(() => undefined);
    }
  }
}
