import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PROTO_PATH } from '@kiln/proto';

/**
 * A host agent on a real gRPC port whose create answers, fails (`createFails`) or never answers (`createAnswers`
 * false), and which lists what it "runs".
 */
export class FakeHostAgent {
  readonly running = new Set<string>();
  readonly destroyed: string[] = [];
  readonly createDeadlines: number[] = [];
  /** The env vars each create request carried, by sandbox id. */
  readonly envVarsOf = new Map<string, Record<string, string>>();
  createAnswers = true;
  createFails = false;
  private readonly server = new grpc.Server();
  address = '';

  async start(): Promise<void> {
    const definition = protoLoader.loadSync(HOSTAGENT_PROTO_PATH, { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] });
    const proto = grpc.loadPackageDefinition(definition) as unknown as { kiln: { hostagent: { v1: { HostAgent: { service: grpc.ServiceDefinition } } } } };
    type Call = grpc.ServerUnaryCall<Record<string, unknown>, unknown>;
    this.server.addService(proto.kiln.hostagent.v1.HostAgent.service, {
      createSandbox: (call: Call, callback: grpc.sendUnaryData<unknown>) => {
        const request = call.request as { sandboxId: string; buildId: string; vcpus: number; memoryMib: number; envVars?: Record<string, string> };
        this.envVarsOf.set(request.sandboxId, { ...(request.envVars ?? {}) });
        const deadline = call.getDeadline();
        this.createDeadlines.push(deadline instanceof Date ? deadline.getTime() : Number(deadline));
        // The VM exists on the host from here on, whether or not the create is ever answered.
        this.running.add(request.sandboxId);
        if (!this.createAnswers) return;
        if (this.createFails) {
          this.running.delete(request.sandboxId);
          callback({ code: grpc.status.INTERNAL, details: 'the fake host was told to fail this create' });
          return;
        }
        callback(null, { sandboxId: request.sandboxId, buildId: request.buildId, vcpus: request.vcpus, memoryMib: request.memoryMib, egress: { allowOut: [], denyOut: [] } });
      },
      destroySandbox: (call: Call, callback: grpc.sendUnaryData<unknown>) => {
        const { sandboxId } = call.request as { sandboxId: string };
        this.destroyed.push(sandboxId);
        this.running.delete(sandboxId);
        callback(null, {});
      },
      listSandboxes: (_call: Call, callback: grpc.sendUnaryData<unknown>) => {
        callback(null, { sandboxes: [...this.running].map((sandboxId) => ({ sandboxId })) });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
    );
    this.address = `127.0.0.1:${port}`;
  }

  /** Forced: creates it never answered are still open on the server, and a graceful shutdown would wait for them. */
  stop(): Promise<void> {
    this.server.forceShutdown();
    return Promise.resolve();
  }
}
