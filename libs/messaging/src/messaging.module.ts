import { DynamicModule, Global, Inject, Module, OnModuleInit } from '@nestjs/common';
import { ClientProxyFactory, NatsOptions, Transport } from '@nestjs/microservices';
import { DependencyHealth } from '@kiln/telemetry';
import { MessagingClient, NATS_CLIENT_PROXY } from './messaging.client';
import { NatsAuth, natsAuthOptions } from './nats-auth';
import { NatsConnectionHolder } from './nats-connection';
import { SandboxEventStream } from './sandbox-event-stream';

export interface MessagingOptions {
  natsUrl: string;
  /** Connection name shown by the NATS server (`service@host`). */
  name: string;
  /** Credentials and TLS (natsAuthOf(env)); unset: anonymous. */
  auth?: NatsAuth;
  /**
   * Whether this service publishes or consumes the JetStream sandbox events (and so makes sure their stream
   * exists). Services that do not are not granted the JetStream API (nats-permissions.ts). Default true.
   */
  jetStream?: boolean;
}

const MESSAGING_OPTIONS = Symbol('MESSAGING_OPTIONS');

/** Options for an app that serves NATS request/reply handlers (Nest microservice). */
export function natsServerOptions(natsUrl: string, queue: string, auth?: NatsAuth): NatsOptions {
  return { transport: Transport.NATS, options: { servers: [natsUrl], queue, ...RECONNECT_FOREVER, ...natsAuthOptions(auth) } };
}

/**
 * The nats client gives up after 10 reconnect attempts (about 20 s) by default and then stays closed: an outage
 * longer than that would need a restart. Every Kiln connection keeps trying for as long as the process runs.
 */
export const RECONNECT_FOREVER = { reconnect: true, maxReconnectAttempts: -1, reconnectTimeWait: 1_000 } as const;

@Global()
@Module({})
export class MessagingModule implements OnModuleInit {
  constructor(
    private readonly holder: NatsConnectionHolder,
    private readonly client: MessagingClient,
    private readonly health: DependencyHealth,
    private readonly events: SandboxEventStream,
    @Inject(MESSAGING_OPTIONS) private readonly options: MessagingOptions,
  ) {}

  static forRoot(options: MessagingOptions): DynamicModule {
    return {
      module: MessagingModule,
      providers: [
        { provide: MESSAGING_OPTIONS, useValue: options },
        {
          provide: NATS_CLIENT_PROXY,
          useFactory: () =>
            ClientProxyFactory.create({
              transport: Transport.NATS,
              options: { servers: [options.natsUrl], name: options.name, ...RECONNECT_FOREVER, ...natsAuthOptions(options.auth) },
            }),
        },
        MessagingClient,
        NatsConnectionHolder,
        SandboxEventStream,
      ],
      exports: [MessagingClient, NatsConnectionHolder, SandboxEventStream],
    };
  }

  async onModuleInit(): Promise<void> {
    const { natsUrl, name, auth, jetStream = true } = this.options;
    await this.holder.open(natsUrl, name, auth);
    await this.client.connect();
    if (jetStream) await this.events.ensureStream();
    this.health.register('nats', () => this.holder.ping());
  }
}
