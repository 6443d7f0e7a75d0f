import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import { SandboxState as HostSandboxState } from '@kiln/proto/hostagent';

/** What the fake does with one call: answer, fail with a gRPC status, or never answer. */
export type FakeOutcome = { fail: grpc.status; details?: string } | 'hang' | undefined;

/**
 * A fake of the host agent (a separate service): a real gRPC server on a loopback port speaking the host agent's
 * proto. Its create answers, fails (`createFails`) or never answers (`createAnswers` false); it keeps which sandboxes
 * run or are paused, and pause, resume, fork and snapshots answer, fail or hang as the test sets (`pauseOutcome`,
 * `resumeOutcome`, `failForkAt`, ...), recording every request it got.
 */
export class FakeHostAgent {
  readonly running = new Set<string>();
  readonly paused = new Set<string>();
  readonly destroyed: string[] = [];
  readonly createDeadlines: number[] = [];
  /** The env vars each create request carried, by sandbox id. */
  readonly envVarsOf = new Map<string, Record<string, string>>();
  readonly createRequests: Array<Record<string, unknown>> = [];
  readonly pauseRequests: Array<{ sandboxId: string; keepMemory: boolean }> = [];
  readonly resumeRequests: Array<Record<string, unknown>> = [];
  readonly forkRequests: Array<{ sourceSandboxId: string; forks: Array<Record<string, unknown>> }> = [];
  readonly snapshotRequests: Array<{ sandboxId: string; snapshotId: string }> = [];
  readonly deletedSnapshots: string[] = [];
  readonly snapshots = new Set<string>();
  createAnswers = true;
  createFails = false;
  pauseOutcome: FakeOutcome;
  /** After a failed pause, what GetSandbox reports: the VM left running (default) or paused. */
  afterFailedPause: 'running' | 'paused' = 'running';
  resumeOutcome: FakeOutcome;
  /** A failed resume that took effect first: the agent committed it and died before answering. */
  resumeCommitsBeforeFailing = false;
  /** GetSandbox answers UNAVAILABLE, as an agent that is restarting. */
  getSandboxUnavailable = false;
  resumeDelayMs = 0;
  /** Fork targets at these positions fail with RESOURCE_EXHAUSTED. */
  failForkAt = new Set<number>();
  private server = new grpc.Server();
  address = '';

  constructor(readonly hostName = 'fake-host') {}

  /** Starts serving; after a stop, again on the same address (a restarted agent keeps its port). */
  async start(): Promise<void> {
    this.server = new grpc.Server();
    const definition = protoLoader.loadSync(HOSTAGENT_PROTO_PATH, { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] });
    const proto = grpc.loadPackageDefinition(definition) as unknown as { kiln: { hostagent: { v1: { HostAgent: { service: grpc.ServiceDefinition } } } } };
    type Call = grpc.ServerUnaryCall<Record<string, unknown>, unknown>;
    type Callback = grpc.sendUnaryData<unknown>;
    const info = (sandboxId: string, state: HostSandboxState, extra: Record<string, unknown> = {}) => ({
      sandboxId,
      templateId: 'base',
      buildId: 'fake-build',
      state,
      vcpus: 1,
      memoryMib: 512,
      egress: { allowOut: [], denyOut: [] },
      ...extra,
    });
    this.server.addService(proto.kiln.hostagent.v1.HostAgent.service, {
      createSandbox: (call: Call, callback: Callback) => {
        const request = call.request as {
          sandboxId: string;
          buildId: string;
          vcpus: number;
          memoryMib: number;
          envVars?: Record<string, string>;
          egress?: { allowOut: string[]; denyOut: string[] };
        };
        this.createRequests.push({ ...call.request });
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
        // The rules the host applied are the ones asked for.
        callback(null, {
          sandboxId: request.sandboxId,
          buildId: request.buildId,
          vcpus: request.vcpus,
          memoryMib: request.memoryMib,
          egress: { allowOut: request.egress?.allowOut ?? [], denyOut: request.egress?.denyOut ?? [] },
        });
      },
      destroySandbox: (call: Call, callback: Callback) => {
        const { sandboxId } = call.request as { sandboxId: string };
        this.destroyed.push(sandboxId);
        this.running.delete(sandboxId);
        this.paused.delete(sandboxId);
        callback(null, {});
      },
      listSandboxes: (_call: Call, callback: Callback) => {
        callback(null, {
          sandboxes: [
            ...[...this.running].map((sandboxId) => info(sandboxId, HostSandboxState.SANDBOX_STATE_RUNNING)),
            ...[...this.paused].map((sandboxId) => info(sandboxId, HostSandboxState.SANDBOX_STATE_PAUSED)),
          ],
        });
      },
      getSandbox: (call: Call, callback: Callback) => {
        const { sandboxId } = call.request as { sandboxId: string };
        if (this.getSandboxUnavailable) return callback({ code: grpc.status.UNAVAILABLE, details: 'the fake host is restarting' });
        if (this.running.has(sandboxId)) return callback(null, info(sandboxId, HostSandboxState.SANDBOX_STATE_RUNNING));
        if (this.paused.has(sandboxId)) return callback(null, info(sandboxId, HostSandboxState.SANDBOX_STATE_PAUSED));
        callback({ code: grpc.status.NOT_FOUND, details: `sandbox ${sandboxId} not found` });
      },
      pauseSandbox: (call: Call, callback: Callback) => {
        const request = call.request as { sandboxId: string; keepMemory: boolean };
        this.pauseRequests.push({ sandboxId: request.sandboxId, keepMemory: request.keepMemory });
        if (this.pauseOutcome === 'hang') return;
        if (this.pauseOutcome) {
          if (this.afterFailedPause === 'paused') {
            this.running.delete(request.sandboxId);
            this.paused.add(request.sandboxId);
          }
          return callback({ code: this.pauseOutcome.fail, details: this.pauseOutcome.details ?? 'the fake host was told to fail this pause' });
        }
        if (!this.running.has(request.sandboxId)) return callback({ code: grpc.status.NOT_FOUND, details: 'not running here' });
        this.running.delete(request.sandboxId);
        this.paused.add(request.sandboxId);
        callback(null, {
          sandboxId: request.sandboxId,
          artifacts: { keepMemory: request.keepMemory, memoryBytes: 16 << 20, stateBytes: 4096, diskBytes: 1 << 20, manifestSha256: 'ab'.repeat(32) },
          durationMs: 42,
        });
      },
      resumeSandbox: (call: Call, callback: Callback) => {
        const request = call.request as { sandboxId: string };
        this.resumeRequests.push({ ...call.request });
        if (this.resumeOutcome === 'hang') return;
        const outcome = this.resumeOutcome;
        const answer = () => {
          if (outcome && this.resumeCommitsBeforeFailing && this.paused.has(request.sandboxId)) {
            this.paused.delete(request.sandboxId);
            this.running.add(request.sandboxId);
          }
          if (outcome) return callback({ code: outcome.fail, details: outcome.details ?? 'the fake host was told to fail this resume' });
          if (!this.paused.has(request.sandboxId)) return callback({ code: grpc.status.NOT_FOUND, details: 'not paused here' });
          this.paused.delete(request.sandboxId);
          this.running.add(request.sandboxId);
          callback(null, info(request.sandboxId, HostSandboxState.SANDBOX_STATE_RUNNING));
        };
        if (this.resumeDelayMs > 0) setTimeout(answer, this.resumeDelayMs);
        else answer();
      },
      forkSandbox: (call: Call, callback: Callback) => {
        const request = call.request as { sourceSandboxId: string; forks: Array<{ sandboxId: string; egress?: { allowOut: string[]; denyOut: string[] } }> };
        this.forkRequests.push({ sourceSandboxId: request.sourceSandboxId, forks: request.forks.map((f) => ({ ...f })) });
        if (!this.running.has(request.sourceSandboxId)) return callback({ code: grpc.status.NOT_FOUND, details: 'source not running here' });
        const results = request.forks.map((fork, index) => {
          if (this.failForkAt.has(index)) {
            return { sandboxId: fork.sandboxId, errorCode: 'RESOURCE_EXHAUSTED', errorMessage: 'the fake host has no slot for this fork' };
          }
          this.running.add(fork.sandboxId);
          return {
            sandboxId: fork.sandboxId,
            sandbox: info(fork.sandboxId, HostSandboxState.SANDBOX_STATE_RUNNING, { egress: { allowOut: fork.egress?.allowOut ?? [], denyOut: fork.egress?.denyOut ?? [] } }),
          };
        });
        callback(null, { results, checkpointMs: 12 });
      },
      createSnapshot: (call: Call, callback: Callback) => {
        const request = call.request as { sandboxId: string; snapshotId: string };
        this.snapshotRequests.push({ sandboxId: request.sandboxId, snapshotId: request.snapshotId });
        if (!this.running.has(request.sandboxId)) return callback({ code: grpc.status.NOT_FOUND, details: 'not running here' });
        this.snapshots.add(request.snapshotId);
        callback(null, {
          snapshotId: request.snapshotId,
          sourceSandboxId: request.sandboxId,
          templateId: 'base',
          buildId: 'fake-build',
          vcpus: 1,
          memoryMib: 512,
          sizeBytes: 1234,
          manifestSha256: 'cd'.repeat(32),
          createdAtMs: Date.now(),
        });
      },
      deleteSnapshot: (call: Call, callback: Callback) => {
        const { snapshotId } = call.request as { snapshotId: string };
        this.deletedSnapshots.push(snapshotId);
        callback(null, { existed: this.snapshots.delete(snapshotId) });
      },
    });
    const port = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(this.address || '127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
    );
    this.address = `127.0.0.1:${port}`;
  }

  /** Forced: creates it never answered are still open on the server, and a graceful shutdown would wait for them. */
  stop(): Promise<void> {
    this.server.forceShutdown();
    return Promise.resolve();
  }
}
