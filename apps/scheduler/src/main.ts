import 'reflect-metadata';
import { SchedulerEnv, loadConfig, runOrExit } from '@kiln/config';
import { natsAuthOf, natsServerOptions } from '@kiln/messaging';
import { startHttpService } from '@kiln/telemetry';
import { AppModule, SERVICE_NAME } from './app.module';

void runOrExit(SERVICE_NAME, async () => {
  const env = loadConfig(SchedulerEnv);
  await startHttpService(AppModule.forRoot(env), {
    port: env.HTTP_PORT,
    configure: (app) => {
      // Queue group: with several scheduler replicas each request is answered once.
      app.connectMicroservice(natsServerOptions(env.NATS_URL, SERVICE_NAME, natsAuthOf(env)));
    },
  });
});
