import { INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, NestFastifyApplication } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { SchedulerEnv } from '@kiln/config';
import { MessagingModule, NatsAuth, natsAuthOf, natsServerOptions } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { AppModule } from '../../src/app.module';

/** A real scheduler (HTTP on a free loopback port, its NATS microservice started), as main.ts would run it. */
export async function startScheduler(env: SchedulerEnv): Promise<NestFastifyApplication> {
  const app = await NestFactory.create<NestFastifyApplication>(AppModule.forRoot(env), new FastifyAdapter(), { logger: false });
  app.connectMicroservice(natsServerOptions(env.NATS_URL, 'scheduler', natsAuthOf(env)));
  await app.startAllMicroservices();
  await app.listen(0, '127.0.0.1');
  return app;
}

/** A NATS client context standing in for the gateway: it sends the scheduler requests as the gateway does. */
export async function startCaller(natsUrl: string, auth?: NatsAuth): Promise<INestApplicationContext> {
  const moduleRef = await Test.createTestingModule({
    imports: [
      TelemetryModule.forRoot({ service: 'test-caller', logLevel: 'silent' }),
      // The gateway's user has no JetStream grant: with credentials, the caller does not touch the event stream either.
      MessagingModule.forRoot({ natsUrl, name: 'test-caller', auth, jetStream: auth === undefined }),
    ],
  }).compile();
  return moduleRef.init();
}
