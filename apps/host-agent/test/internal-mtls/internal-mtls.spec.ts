import 'reflect-metadata';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ChannelCredentials, Client, ClientReadableStream, ServiceError, credentials, loadPackageDefinition, status } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { INestMicroservice } from '@nestjs/common';
import type { HostAgentEnv } from '@kiln/config';
import { grpcChannelCredentials, httpsAgentOptions, loadInternalTls } from '@kiln/config/internal-tls';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import { MetricsRegistry } from '@kiln/telemetry';
import { freePort } from '@kiln/testing';
import { HostInfoService } from '../../src/control-plane/host-info.service';
import { hostAgentGrpcOptions } from '../../src/grpc/grpc-server-options';
import { throwError } from 'rxjs';
import { HostAgentGrpcController } from '../../src/grpc/host-agent.grpc.controller';
import { InvalidBuildRequestError, TemplateBuildService } from '../../src/template-build';
import { SandboxTrafficProxy } from '../../src/proxy/sandbox-traffic-proxy';
import { SandboxManager } from '../../src/sandbox/sandbox-manager.service';

/**
 * The host agent's internal plane over mTLS, with the certificates `npm run up` and the test stacks make
 * (tools/stack/internal-tls.sh): its real gRPC server (main.ts's options, the real controller over a host with no
 * sandboxes) and its real sandbox-traffic proxy. Each refusal has a control that gets through on the same port.
 */
const ROOT = join(__dirname, '..', '..', '..', '..');
const dir = mkdtempSync(join(tmpdir(), 'kiln-internal-mtls-'));
const files = (service: string) => ({ caFile: join(dir, 'ca.pem'), certFile: join(dir, `${service}.pem`), keyFile: join(dir, `${service}-key.pem`) });
const material = (service: string) => loadInternalTls(files(service));

type Unary = (request: object, callback: (error: ServiceError | null, response: { sandboxes: unknown[] }) => void) => void;
type HostAgentGrpc = Client & { listSandboxes: Unary; buildTemplate: (request: object) => ClientReadableStream<unknown> };

function grpcClient(address: string, channelCredentials: ChannelCredentials): HostAgentGrpc {
  const definition = loadSync(HOSTAGENT_PROTO_PATH, { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] });
  const pkg = loadPackageDefinition(definition) as unknown as {
    kiln: { hostagent: { v1: { HostAgent: new (address: string, creds: ChannelCredentials) => HostAgentGrpc } } };
  };
  return new pkg.kiln.hostagent.v1.HostAgent(address, channelCredentials);
}

/** ListSandboxes with the given credentials: the response, or the gRPC status code it failed with. */
async function listSandboxes(address: string, channelCredentials: ChannelCredentials): Promise<{ sandboxes: unknown[] } | { code: number; details: string }> {
  const client = grpcClient(address, channelCredentials);
  try {
    return await new Promise((resolve) =>
      client.listSandboxes({}, (error, response) => resolve(error ? { code: error.code, details: error.details } : response)),
    );
  } finally {
    client.close();
  }
}

/** BuildTemplate (server streaming) with the given credentials: the status it ended with, and how many events came. */
async function buildTemplate(address: string, channelCredentials: ChannelCredentials): Promise<{ code: number; details: string; events: number }> {
  const client = grpcClient(address, channelCredentials);
  try {
    return await new Promise((resolve) => {
      let events = 0;
      const call = client.buildTemplate({ templateId: 'mtls-check', buildId: '00000000-0000-4000-8000-000000000000' });
      call.on('data', () => events++);
      call.on('error', (error: ServiceError) => resolve({ code: error.code, details: error.details, events }));
      call.on('status', (end: { code: number; details: string }) => end.code === status.OK && resolve({ code: end.code, details: end.details, events }));
    });
  } finally {
    client.close();
  }
}

beforeAll(() => {
  // template-builder: a certificate from the same CA, of a Kiln service that may only run builds on a host agent.
  execFileSync('bash', [join(ROOT, 'tools', 'stack', 'internal-tls.sh'), dir, '127.0.0.1,localhost', 'scheduler', 'gateway', 'host-agent', 'template-builder']);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('host agent gRPC over mTLS', () => {
  const sandboxes = { list: () => [] } as unknown as SandboxManager;
  let app: INestMicroservice;
  let address: string;

  @Module({
    controllers: [HostAgentGrpcController],
    providers: [
      { provide: SandboxManager, useValue: sandboxes },
      { provide: HostInfoService, useValue: {} },
      // The handler past the identity check: a build of nothing is refused as the build service refuses it.
      { provide: TemplateBuildService, useValue: { build: () => throwError(() => new InvalidBuildRequestError('base: a template or an image is required')) } },
    ],
  })
  class GrpcOnlyModule {}

  beforeAll(async () => {
    const port = await freePort();
    address = `127.0.0.1:${port}`;
    const env = { KILN_HOST_ADDRESS: '127.0.0.1', GRPC_PORT: port } as HostAgentEnv;
    app = await NestFactory.createMicroservice(GrpcOnlyModule, { ...hostAgentGrpcOptions(env, material('host-agent')), logger: false });
    await app.listen();
  });

  afterAll(async () => {
    await app?.close();
  });

  it('answers the scheduler (control) and the gateway', async () => {
    expect(await listSandboxes(address, grpcChannelCredentials(material('scheduler')))).toEqual({ sandboxes: [] });
    expect(await listSandboxes(address, grpcChannelCredentials(material('gateway')))).toEqual({ sandboxes: [] });
  });

  it('refuses a client without a certificate at the handshake, and a plaintext one', async () => {
    expect(await listSandboxes(address, credentials.createSsl(readFileSync(files('scheduler').caFile)))).toMatchObject({ code: status.UNAVAILABLE });
    expect(await listSandboxes(address, credentials.createInsecure())).toMatchObject({ code: status.UNAVAILABLE });
  });

  it('refuses a certificate from the internal CA that names another service with PERMISSION_DENIED', async () => {
    expect(await listSandboxes(address, grpcChannelCredentials(material('template-builder')))).toEqual({
      code: status.PERMISSION_DENIED,
      details: expect.stringContaining('spiffe://kiln/template-builder may not call this service'),
    });
  });

  it('lets the template builder call BuildTemplate and nothing else (control: the scheduler reaches the same handler)', async () => {
    // Past the identity check the handler answers (today UNIMPLEMENTED until the host's build module lands, later an
    // argument error for this empty build): the template builder gets exactly what the scheduler gets.
    const asScheduler = await buildTemplate(address, grpcChannelCredentials(material('scheduler')));
    const asTemplateBuilder = await buildTemplate(address, grpcChannelCredentials(material('template-builder')));
    expect(asScheduler.code).not.toBe(status.PERMISSION_DENIED);
    expect(asScheduler.code).not.toBe(status.UNAVAILABLE);
    expect(asTemplateBuilder).toEqual(asScheduler);
    // On any other method it is still refused, while the gateway keeps its rights.
    expect(await listSandboxes(address, grpcChannelCredentials(material('template-builder')))).toMatchObject({ code: status.PERMISSION_DENIED });
    expect(await listSandboxes(address, grpcChannelCredentials(material('gateway')))).toEqual({ sandboxes: [] });
  });

  it('makes the scheduler refuse a server whose certificate is not a host agent’s', async () => {
    // The scheduler's own certificate on the server side: from the right CA, but not spiffe://kiln/host-agent.
    const port = await freePort();
    const impostor = await NestFactory.createMicroservice(GrpcOnlyModule, {
      ...hostAgentGrpcOptions({ KILN_HOST_ADDRESS: '127.0.0.1', GRPC_PORT: port } as HostAgentEnv, material('gateway')),
      logger: false,
    });
    await impostor.listen();
    try {
      const refused = await listSandboxes(`127.0.0.1:${port}`, grpcChannelCredentials(material('scheduler')));
      expect(refused).toEqual({ code: status.UNAVAILABLE, details: expect.stringContaining('names spiffe://kiln/gateway, not spiffe://kiln/host-agent') });
    } finally {
      await impostor.close();
    }
  });
});

describe('host agent sandbox-traffic proxy over mTLS', () => {
  let proxy: SandboxTrafficProxy;

  interface Answer {
    status?: number;
    body?: unknown;
    error?: string;
  }

  /** GET through the proxy for a sandbox this host does not have, as `service` (undefined: no client certificate). */
  function get(service: string | undefined): Promise<Answer> {
    const ca = readFileSync(files('gateway').caFile);
    const tls = service ? httpsAgentOptions(material(service), 'host-agent') : { ca };
    return new Promise((resolve) => {
      const req = httpsRequest(
        { host: '127.0.0.1', port: proxy.port, path: '/health', headers: { 'e2b-sandbox-id': 'not-here', 'e2b-sandbox-port': '49983' }, ...tls, agent: false },
        (res) => {
          let text = '';
          res.on('data', (chunk) => (text += String(chunk)));
          res.on('end', () => resolve({ status: res.statusCode, body: JSON.parse(text) }));
        },
      );
      req.on('error', (error) => resolve({ error: error.message }));
      req.end();
    });
  }

  beforeAll(async () => {
    const agentFiles = files('host-agent');
    const env = {
      PROXY_PORT: 0,
      KILN_HOST_ADDRESS: '127.0.0.1',
      KILN_INTERNAL_CA_FILE: agentFiles.caFile,
      KILN_INTERNAL_CERT_FILE: agentFiles.certFile,
      KILN_INTERNAL_KEY_FILE: agentFiles.keyFile,
    } as HostAgentEnv;
    const sandboxes = { get: () => undefined, onSandboxEnding: () => () => undefined } as unknown as SandboxManager;
    proxy = new SandboxTrafficProxy(env, sandboxes, new MetricsRegistry());
    await proxy.onApplicationBootstrap();
  });

  afterAll(async () => {
    await proxy?.onApplicationShutdown();
  });

  it('lets the gateway reach the routing (control: a 502 JSON for a sandbox it does not have)', async () => {
    expect(await get('gateway')).toEqual({ status: 502, body: { code: 502, message: 'sandbox not-here is not running on this host' } });
  });

  it('answers a CA-signed certificate of another service with 403 JSON', async () => {
    for (const service of ['scheduler', 'template-builder']) {
      expect(await get(service)).toEqual({
        status: 403,
        body: { code: 403, message: expect.stringContaining(`spiffe://kiln/${service} may not call this service`) },
      });
    }
  });

  it('refuses a client without a certificate at the handshake, and plain HTTP', async () => {
    expect(await get(undefined)).toEqual({ error: expect.stringMatching(/certificate required/) });
    const plain = await new Promise<Answer>((resolve) => {
      const req = httpRequest({ host: '127.0.0.1', port: proxy.port, path: '/', headers: { 'e2b-sandbox-id': 'not-here' } }, (res) => {
        res.resume();
        resolve({ status: res.statusCode });
      });
      req.on('error', (error) => resolve({ error: error.message }));
      req.end();
    });
    expect(plain.status).toBeUndefined();
  });
});
