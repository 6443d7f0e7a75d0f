import 'reflect-metadata';
import { Transport } from '@nestjs/microservices';
import { HostAgentEnv, loadConfig, runOrExit } from '@kiln/config';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PACKAGE, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import { startHttpService } from '@kiln/telemetry';
import { AppModule, SERVICE_NAME } from './app.module';

void runOrExit(SERVICE_NAME, async () => {
  const env = loadConfig(HostAgentEnv);
  await startHttpService(AppModule.forRoot(env), {
    port: env.HTTP_PORT,
    configure: (app) => {
      app.connectMicroservice({
        transport: Transport.GRPC,
        options: {
          package: HOSTAGENT_PACKAGE,
          protoPath: HOSTAGENT_PROTO_PATH,
          url: `0.0.0.0:${env.GRPC_PORT}`,
          loader: { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] },
        },
      });
    },
  });
});
