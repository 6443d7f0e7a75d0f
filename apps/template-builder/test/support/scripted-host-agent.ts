import { Server, ServerCredentials, ServerWritableStream, ServiceDefinition, loadPackageDefinition, status } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { identityOfCertificate } from '@kiln/config/internal-tls';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import type { BuildTemplateEvent, BuildTemplateRequest } from '@kiln/proto/hostagent';

/** What one BuildTemplate call does: stream `events`, then end with `error` (a gRPC status) or OK, or hang until cancelled. */
export interface ScriptedCall {
  events: BuildTemplateEvent[];
  error?: { code: status; details: string };
  hang?: boolean;
}

export interface ReceivedCall {
  request: BuildTemplateRequest;
  /** The Kiln service the caller's certificate names (with mTLS). */
  caller?: string;
  cancelled: boolean;
}

/**
 * A host agent that is a real grpc-js server speaking the HostAgent service, whose BuildTemplate streams what the test
 * scripted for each build id (one script per call, in order). Every other method answers UNIMPLEMENTED.
 */
export class ScriptedHostAgent {
  private readonly server = new Server();
  private readonly scripts = new Map<string, ScriptedCall[]>();
  readonly calls: ReceivedCall[] = [];
  private onCall?: (call: ReceivedCall) => void;
  port = 0;

  constructor(private readonly credentials: ServerCredentials = ServerCredentials.createInsecure()) {
    const definition = loadSync(HOSTAGENT_PROTO_PATH, { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] });
    const pkg = loadPackageDefinition(definition) as unknown as { kiln: { hostagent: { v1: { HostAgent: { service: ServiceDefinition } } } } };
    this.server.addService(pkg.kiln.hostagent.v1.HostAgent.service, {
      buildTemplate: (call: ServerWritableStream<BuildTemplateRequest, BuildTemplateEvent>) => void this.build(call),
    });
  }

  /** Queues what the next BuildTemplate call for `buildId` does. */
  script(buildId: string, ...calls: ScriptedCall[]): void {
    this.scripts.set(buildId, [...(this.scripts.get(buildId) ?? []), ...calls]);
  }

  callsFor(buildId: string): ReceivedCall[] {
    return this.calls.filter((c) => c.request.buildId === buildId);
  }

  /** Resolves with the next call's record once it arrived. */
  nextCall(): Promise<ReceivedCall> {
    return new Promise((resolve) => (this.onCall = resolve));
  }

  async start(): Promise<string> {
    this.port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync('127.0.0.1:0', this.credentials, (error, port) => (error ? reject(error) : resolve(port))),
    );
    return `127.0.0.1:${this.port}`;
  }

  stop(): Promise<void> {
    return new Promise((resolve) => this.server.tryShutdown(() => resolve()));
  }

  private async build(call: ServerWritableStream<BuildTemplateRequest, BuildTemplateEvent>): Promise<void> {
    const received: ReceivedCall = { request: call.request, caller: identityOfCertificate(call.getAuthContext().sslPeerCertificate), cancelled: false };
    this.calls.push(received);
    const cancelled = new Promise<void>((resolve) => call.on('cancelled', () => ((received.cancelled = true), resolve())));
    this.onCall?.(received);
    const script = this.scripts.get(call.request.buildId)?.shift();
    if (!script) return void call.emit('error', { code: status.FAILED_PRECONDITION, details: `no script for build ${call.request.buildId}` });
    for (const event of script.events) {
      if (received.cancelled) return;
      call.write(event);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    if (script.hang) return void (await cancelled);
    if (script.error) return void call.emit('error', script.error);
    call.end();
  }
}
