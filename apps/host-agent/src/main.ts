import 'reflect-metadata';
import { HostAgentEnv, loadConfig, runOrExit } from '@kiln/config';
import { internalTlsOf } from '@kiln/config/internal-tls';
import { startHttpService } from '@kiln/telemetry';
import { AppModule, SERVICE_NAME } from './app.module';
import { hostAgentGrpcOptions } from './grpc/grpc-server-options';

void runOrExit(SERVICE_NAME, async () => {
  const env = loadConfig(HostAgentEnv);
  // Read before anything starts: a missing or wrong certificate fails the start, naming its variable.
  const internalTls = internalTlsOf(env);
  await startHttpService(AppModule.forRoot(env), {
    port: env.HTTP_PORT,
    configure: (app) => {
      app.connectMicroservice(hostAgentGrpcOptions(env, internalTls));
    },
  });
});
