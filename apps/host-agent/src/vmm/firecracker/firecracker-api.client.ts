import { request } from 'node:http';
import { access } from 'node:fs/promises';
import { FirecrackerApiError, FirecrackerConnectionError } from './firecracker.errors';
import type {
  BootSource,
  Drive,
  FirecrackerErrorBody,
  InstanceActionInfo,
  InstanceInfo,
  LoggerConfig,
  MachineConfiguration,
  NetworkInterface,
  SnapshotCreateParams,
  SnapshotLoadParams,
  VmState,
} from './firecracker-api';

/** Per call: Firecracker answers configuration calls in microseconds, snapshot calls in seconds for big guests. */
const DEFAULT_CALL_TIMEOUT_MS = 10_000;
const SNAPSHOT_CALL_TIMEOUT_MS = 120_000;

/**
 * Firecracker's REST API over its unix socket (one HTTP/1.1 request per call, no keep-alive: Firecracker serves
 * one connection at a time). Every non-2xx answer becomes a FirecrackerApiError carrying `fault_message`.
 */
export class FirecrackerApiClient {
  constructor(
    readonly socketPath: string,
    private readonly callTimeoutMs = DEFAULT_CALL_TIMEOUT_MS,
  ) {}

  /** Waits until the socket exists and answers GET /; rejects when `abort` fires (the VMM exited) or at the deadline. */
  static async connect(socketPath: string, timeoutMs: number, abort?: AbortSignal): Promise<FirecrackerApiClient> {
    const client = new FirecrackerApiClient(socketPath);
    const deadline = Date.now() + timeoutMs;
    let lastError = 'socket never appeared';
    for (;;) {
      if (abort?.aborted) throw new FirecrackerConnectionError(`Firecracker exited before its API socket was ready (${String(abort.reason)})`);
      try {
        await access(socketPath);
        await client.getInstanceInfo();
        return client;
      } catch (error) {
        if (error instanceof FirecrackerApiError) throw error;
        lastError = (error as Error).message;
      }
      if (Date.now() >= deadline) {
        throw new FirecrackerConnectionError(`Firecracker API socket ${socketPath} not ready after ${timeoutMs} ms: ${lastError}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  putMachineConfig(body: MachineConfiguration): Promise<void> {
    return this.call('PUT', '/machine-config', body).then(() => undefined);
  }

  putBootSource(body: BootSource): Promise<void> {
    return this.call('PUT', '/boot-source', body).then(() => undefined);
  }

  putDrive(body: Drive): Promise<void> {
    return this.call('PUT', `/drives/${encodeURIComponent(body.drive_id)}`, body).then(() => undefined);
  }

  putNetworkInterface(body: NetworkInterface): Promise<void> {
    return this.call('PUT', `/network-interfaces/${encodeURIComponent(body.iface_id)}`, body).then(() => undefined);
  }

  putLogger(body: LoggerConfig): Promise<void> {
    return this.call('PUT', '/logger', body).then(() => undefined);
  }

  putAction(actionType: InstanceActionInfo['action_type']): Promise<void> {
    return this.call('PUT', '/actions', { action_type: actionType } satisfies InstanceActionInfo).then(() => undefined);
  }

  patchVm(state: VmState['state']): Promise<void> {
    return this.call('PATCH', '/vm', { state } satisfies VmState).then(() => undefined);
  }

  putSnapshotCreate(body: SnapshotCreateParams): Promise<void> {
    return this.call('PUT', '/snapshot/create', body, SNAPSHOT_CALL_TIMEOUT_MS).then(() => undefined);
  }

  putSnapshotLoad(body: SnapshotLoadParams): Promise<void> {
    return this.call('PUT', '/snapshot/load', body, SNAPSHOT_CALL_TIMEOUT_MS).then(() => undefined);
  }

  async getInstanceInfo(): Promise<InstanceInfo> {
    return (await this.call('GET', '/')) as InstanceInfo;
  }

  private call(method: 'GET' | 'PUT' | 'PATCH', path: string, body?: unknown, timeoutMs = this.callTimeoutMs): Promise<unknown> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path,
          agent: false,
          headers: {
            Accept: 'application/json',
            ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('error', (error) => reject(new FirecrackerConnectionError(`${method} ${path}: ${error.message}`)));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            let parsed: unknown;
            try {
              parsed = text ? JSON.parse(text) : undefined;
            } catch {
              parsed = undefined;
            }
            if (status >= 200 && status < 300) return resolve(parsed);
            const fault = (parsed as FirecrackerErrorBody | undefined)?.fault_message ?? text.trim();
            reject(new FirecrackerApiError(method, path, status, fault));
          });
        },
      );
      req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
      req.on('error', (error) => reject(new FirecrackerConnectionError(`${method} ${path} on ${this.socketPath}: ${error.message}`)));
      req.end(payload);
    });
  }
}
