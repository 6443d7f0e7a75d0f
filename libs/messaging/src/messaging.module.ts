import { DynamicModule, Global, Module, OnModuleInit } from '@nestjs/common';
import { ClientProxyFactory, NatsOptions, Transport } from '@nestjs/microservices';
import { DependencyHealth } from '@kiln/telemetry';
import { MessagingClient, NATS_CLIENT_PROXY } from './messaging.client';
import { NatsConnectionHolder } from './nats-connection';
import { SandboxEventStream } from './sandbox-event-stream';

export interface MessagingOptions {
  natsUrl: string;
  /** Connection name shown by the NATS server (`service@host`). */
  name: string;
}

const MESSAGING_OPTIONS = Symbol('MESSAGING_OPTIONS');

/** Options for an app that serves NATS request/reply handlers (Nest microservice). */
export function natsServerOptions(natsUrl: string, queue: string): NatsOptions {
  return { transport: Transport.NATS, options: { servers: [natsUrl], queue, ...RECONNECT_FOREVER } };
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
  ) {}

  private static options: MessagingOptions;

  static forRoot(options: MessagingOptions): DynamicModule {
    MessagingModule.options = options;
    return {
      module: MessagingModule,
      providers: [
        { provide: MESSAGING_OPTIONS, useValue: options },
        {
          provide: NATS_CLIENT_PROXY,
          useFactory: () => ClientProxyFactory.create({ transport: Transport.NATS, options: { servers: [options.natsUrl], name: options.name, ...RECONNECT_FOREVER } }),
        },
        MessagingClient,
        NatsConnectionHolder,
        SandboxEventStream,
      ],
      exports: [MessagingClient, NatsConnectionHolder, SandboxEventStream],
    };
  }

  async onModuleInit(): Promise<void> {
    const { natsUrl, name } = MessagingModule.options;
    await this.holder.open(natsUrl, name);
    await this.client.connect();
    await this.events.ensureStream();
    this.health.register('nats', () => this.holder.ping());
  }
}
