import { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { HostMonitorEnv } from '@kiln/config';
import {
  HOSTS_KV_BUCKET,
  HOST_EVENTS_SUBJECT_PREFIX,
  HostHeartbeat,
  HostRegistration,
  HostStateEvent,
  HostView,
  MessagingClient,
  MessagingModule,
  MonitorSubjects,
  NatsAuth,
  natsAuthOf,
  natsServerOptions,
} from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { eventually } from '@kiln/testing';
import { JSONCodec, NatsConnection, Subscription } from 'nats';
import { AppModule } from '../../src/app.module';

/** A real host monitor (HTTP on a free loopback port, its NATS microservice in the monitor's queue group), as main.ts runs it. */
export async function startMonitor(env: HostMonitorEnv): Promise<NestFastifyApplication> {
  const app = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(env), new FastifyAdapter(), { logger: false });
  app.connectMicroservice(natsServerOptions(env.NATS_URL, 'host-monitor', natsAuthOf(env)));
  await app.init();
  await app.startAllMicroservices();
  await app.listen(0, '127.0.0.1');
  return app;
}

/** A NATS client standing in for a host agent or the gateway (no JetStream: neither needs it here). */
export async function startCaller(natsUrl: string, auth?: NatsAuth): Promise<INestApplicationContext> {
  const moduleRef = await Test.createTestingModule({
    imports: [TelemetryModule.forRoot({ service: 'test-caller', logLevel: 'silent' }), MessagingModule.forRoot({ natsUrl, name: 'test-caller', auth, jetStream: false })],
  }).compile();
  return moduleRef.init();
}

export function registrationOf(hostId: string, overrides: Partial<HostRegistration> = {}): HostRegistration {
  return {
    hostId,
    grpcAddress: '127.0.0.1:50051',
    proxyUrl: 'http://127.0.0.1:5007',
    acceleration: 'tcg',
    version: 'test-1',
    capacity: { vcpus: 8, memoryMib: 8192, sandboxes: 16, diskMib: 50_000 },
    templates: ['base'],
    readyCloneTemplates: [],
    machine: { cpuModelName: 'Test CPU', cpuArchitecture: 'x86_64', cpuCount: 8, memoryTotalMib: 16384 },
    ...overrides,
  };
}

export function heartbeatOf(hostId: string, sandboxes = 0, overrides: Partial<HostHeartbeat> = {}): HostHeartbeat {
  return {
    hostId,
    at: new Date().toISOString(),
    capacity: { vcpus: 8, memoryMib: 8192, sandboxes: 16, diskMib: 50_000 },
    usage: { vcpus: sandboxes, memoryMib: 512 * sandboxes, sandboxes, diskMib: 2048 * sandboxes, diskUsedMib: 100, starting: 0 },
    templates: ['base'],
    readyCloneTemplates: ['base'],
    sandboxIds: [],
    acceleration: 'tcg',
    agentVersion: 'test-2',
    ...overrides,
  };
}

/** The host's entry in the KILN_HOSTS bucket (what schedulers see), undefined when there is none or it was deleted. */
export async function kvView(nc: NatsConnection, hostId: string): Promise<HostView | undefined> {
  const kv = await nc.jetstream().views.kv(HOSTS_KV_BUCKET);
  const entry = await kv.get(hostId);
  return entry && entry.operation === 'PUT' ? entry.json<HostView>() : undefined;
}

/** Collects host state events (core subscription on the stream's subjects: each JetStream publish is also delivered). */
export class HostEventLog {
  readonly events: HostStateEvent[] = [];
  private readonly subscription: Subscription;

  constructor(nc: NatsConnection) {
    const codec = JSONCodec<HostStateEvent>();
    this.subscription = nc.subscribe(`${HOST_EVENTS_SUBJECT_PREFIX}.>`, { callback: (_error, message) => this.events.push(codec.decode(message.data)) });
  }

  of(hostId: string): HostStateEvent[] {
    return this.events.filter((event) => event.hostId === hostId);
  }

  close(): void {
    this.subscription.unsubscribe();
  }
}

/** Waits until the monitor answers requests: its subscriptions reach the NATS server a moment after it started. */
export async function untilMonitorAnswers(client: MessagingClient): Promise<void> {
  await eventually('the host monitor answers', () => client.request(MonitorSubjects.nodesList, {}, 2_000).then(() => true, () => undefined));
}
