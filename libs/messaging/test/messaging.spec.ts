import { Controller, INestMicroservice, Module, UseFilters } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { MessagePattern, MicroserviceOptions } from '@nestjs/microservices';
import { Test } from '@nestjs/testing';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { TelemetryModule } from '@kiln/telemetry';
import { PrivateServer, startPrivateNats } from '@kiln/testing';
import { KilnRpcExceptionFilter, MessagingClient, MessagingModule, Subjects, natsServerOptions } from '../src';

@Controller()
@UseFilters(KilnRpcExceptionFilter)
class EchoController {
  @MessagePattern(Subjects.schedulerPing)
  ping() {
    return { service: 'echo', at: new Date(0).toISOString() };
  }

  @MessagePattern(Subjects.sandboxGet)
  get(): never {
    throw new KilnError(ErrorCode.NotFound, 'sandbox abc not found');
  }

  @MessagePattern(Subjects.sandboxList)
  list(): never {
    throw new Error('database exploded');
  }
}

@Module({ controllers: [EchoController] })
class EchoModule {}

/** Typed request/reply over a real NATS server: replies, typed errors, unexpected errors, silence. */
describe('MessagingClient over NATS', () => {
  let nats: PrivateServer;
  let server: INestMicroservice;
  let client: MessagingClient;
  let close: () => Promise<void>;

  beforeAll(async () => {
    nats = await startPrivateNats();
    server = await NestFactory.createMicroservice<MicroserviceOptions>(EchoModule, { ...natsServerOptions(nats.url, 'echo'), logger: false });
    await server.listen();
    const moduleRef = await Test.createTestingModule({
      imports: [TelemetryModule.forRoot({ service: 'client', logLevel: 'silent' }), MessagingModule.forRoot({ natsUrl: nats.url, name: 'client' })],
    }).compile();
    const app = await moduleRef.init();
    client = app.get(MessagingClient);
    close = () => app.close();
  });

  afterAll(async () => {
    await close?.();
    await server?.close();
    await nats?.stop();
  });

  it('returns the typed reply', async () => {
    await expect(client.request(Subjects.schedulerPing, {}, 5_000)).resolves.toEqual({ service: 'echo', at: '1970-01-01T00:00:00.000Z' });
  });

  it('rebuilds the handler’s KilnError with its code', async () => {
    await expect(client.request(Subjects.sandboxGet, { teamId: 't', sandboxId: 'abc' }, 5_000)).rejects.toMatchObject({
      code: ErrorCode.NotFound,
      message: 'sandbox abc not found',
    });
  });

  it('turns an unexpected handler error into internal without leaking it', async () => {
    const failure = client.request(Subjects.sandboxList, { teamId: 't', limit: 1 }, 5_000);
    await expect(failure).rejects.toMatchObject({ code: ErrorCode.Internal, message: 'internal error' });
  });

  it('answers unavailable when nobody replies in time', async () => {
    await expect(client.request(Subjects.sandboxKill, { teamId: 't', sandboxId: 'x' }, 300)).rejects.toMatchObject({ code: ErrorCode.Unavailable });
  });
});
