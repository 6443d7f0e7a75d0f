import 'reflect-metadata';
import { Client, ClientReadableStream, ServiceError, credentials, loadPackageDefinition, status } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { Module, type INestMicroservice } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { Observable } from 'rxjs';
import type { HostAgentEnv } from '@kiln/config';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import type { BuildTemplateEvent, BuildTemplateRequest } from '@kiln/proto/hostagent';
import { eventually, freePort } from '@kiln/testing';
import { HostInfoService } from '../../src/control-plane/host-info.service';
import { hostAgentGrpcOptions } from '../../src/grpc/grpc-server-options';
import { HostAgentGrpcController } from '../../src/grpc/host-agent.grpc.controller';
import { SandboxManager } from '../../src/sandbox/sandbox-manager.service';
import { InvalidBuildRequestError, TemplateBuildService } from '../../src/template-build';

type HostAgentGrpc = Client & { buildTemplate: (request: object) => ClientReadableStream<BuildTemplateEvent> };

/**
 * BuildTemplate over a real gRPC server (plaintext, as in development): the build service's events reach the caller
 * in order, a typed error becomes its status, and a call the caller cancels unsubscribes from the build (which is
 * how the build learns to stop and clean up). The build service is a stand-in: the real one is covered by the VM suite.
 */
describe('BuildTemplate over gRPC (server streaming)', () => {
  let app: INestMicroservice;
  let client: HostAgentGrpc;
  const builds = { subscribed: 0, unsubscribed: 0, last: undefined as BuildTemplateRequest | undefined };
  const stub = {
    build(request: BuildTemplateRequest): Observable<BuildTemplateEvent> {
      builds.last = request;
      return new Observable<BuildTemplateEvent>((subscriber) => {
        builds.subscribed++;
        if (request.templateId === 'bad') {
          subscriber.error(new InvalidBuildRequestError('step 1 (NOPE): unknown step type'));
          return;
        }
        subscriber.next({ log: { level: 'info', message: 'hello', step: 1, atMs: 1 } });
        subscriber.next({ step: { step: 1, cached: true, layerKey: 'k', durationMs: 2 } });
        let timer: NodeJS.Timeout | undefined;
        if (request.templateId === 'forever') {
          // Keeps going until the caller goes away.
          timer = setInterval(() => subscriber.next({ log: { level: 'info', message: 'tick', step: 2, atMs: 2 } }), 20);
        } else {
          subscriber.next({ result: { artifacts: [{ name: 'rootfs.ext4', bytes: 3, sha256: 'a'.repeat(64) }], diskMib: 2048, envdVersion: 'v', envs: { A: '1' }, workdir: '/srv', user: 'user', startCmd: '', readyCmd: '', vcpus: 1, memoryMib: 512 } });
          subscriber.complete();
        }
        return () => {
          builds.unsubscribed++;
          if (timer) clearInterval(timer);
        };
      });
    },
  };

  @Module({
    controllers: [HostAgentGrpcController],
    providers: [
      { provide: SandboxManager, useValue: {} },
      { provide: HostInfoService, useValue: {} },
      { provide: TemplateBuildService, useValue: stub },
    ],
  })
  class BuildOnlyModule {}

  beforeAll(async () => {
    const port = await freePort();
    app = await NestFactory.createMicroservice(BuildOnlyModule, { ...hostAgentGrpcOptions({ KILN_HOST_ADDRESS: '127.0.0.1', GRPC_PORT: port } as HostAgentEnv, undefined), logger: false });
    await app.listen();
    const definition = loadSync(HOSTAGENT_PROTO_PATH, { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] });
    const pkg = loadPackageDefinition(definition) as unknown as { kiln: { hostagent: { v1: { HostAgent: new (address: string, creds: ReturnType<typeof credentials.createInsecure>) => HostAgentGrpc } } } };
    client = new pkg.kiln.hostagent.v1.HostAgent(`127.0.0.1:${port}`, credentials.createInsecure());
  });

  afterAll(async () => {
    client?.close();
    await app?.close();
  });

  function call(request: object): { call: ClientReadableStream<BuildTemplateEvent>; events: BuildTemplateEvent[]; end: Promise<{ code: number; details: string }> } {
    const stream = client.buildTemplate(request);
    const events: BuildTemplateEvent[] = [];
    stream.on('data', (event: BuildTemplateEvent) => events.push(event));
    const end = new Promise<{ code: number; details: string }>((resolve) => {
      stream.on('error', (error: ServiceError) => resolve({ code: error.code, details: error.details }));
      stream.on('status', (s: { code: number; details: string }) => s.code === status.OK && resolve({ code: s.code, details: s.details }));
    });
    return { call: stream, events, end };
  }

  it('streams the events in order and ends OK after the result', async () => {
    const { events, end } = call({ templateId: 'tpl', buildId: 'b1', steps: [{ type: 'RUN', args: ['true'] }], vcpus: 1, memoryMib: 512 });
    expect(await end).toMatchObject({ code: status.OK });
    expect(builds.last).toMatchObject({ templateId: 'tpl', buildId: 'b1', steps: [{ type: 'RUN', args: ['true'] }] });
    expect(events.map((e) => Object.keys(e).find((k) => (e as Record<string, unknown>)[k] !== undefined && (e as Record<string, unknown>)[k] !== null))).toEqual(['log', 'step', 'result']);
    expect(events[2].result).toMatchObject({ diskMib: 2048, envs: { A: '1' }, workdir: '/srv', artifacts: [{ name: 'rootfs.ext4' }] });
  });

  it("ends with the error's status for an infrastructure or request error", async () => {
    const { end } = call({ templateId: 'bad', buildId: 'b2' });
    expect(await end).toEqual({ code: status.INVALID_ARGUMENT, details: 'step 1 (NOPE): unknown step type' });
  });

  it('unsubscribes from the build when the caller cancels the call', async () => {
    const before = builds.unsubscribed;
    const { call: stream, events } = call({ templateId: 'forever', buildId: 'b3' });
    await eventually('a few ticks', () => events.filter((e) => e.log?.message === 'tick').length >= 3, { timeoutMs: 5_000, intervalMs: 10 });
    stream.cancel();
    await eventually('the build to be unsubscribed', () => builds.unsubscribed > before, { timeoutMs: 5_000, intervalMs: 10 });
  });
});
