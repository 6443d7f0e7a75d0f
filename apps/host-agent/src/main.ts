import 'reflect-metadata';
import { HostAgentEnv, loadConfig, runOrExit } from '@kiln/config';
import { internalTlsOf } from '@kiln/config/internal-tls';
import { startHttpService } from '@kiln/telemetry';
import { AppModule, SERVICE_NAME } from './app.module';
import { hostAgentGrpcOptions } from './grpc/grpc-server-options';
import { checkFirecrackerHost } from './vmm/firecracker/firecracker-preflight';
import { VmmConfig } from './vmm/vmm.config';

void runOrExit(SERVICE_NAME, async () => {
  const env = loadConfig(HostAgentEnv);
  // Read before anything starts: a missing or wrong certificate fails the start, naming its variable.
  const internalTls = internalTlsOf(env);
  // Before anything connects or starts: a host that cannot run Firecracker says what is missing, in one line.
  if (env.KILN_VMM === 'firecracker') await checkFirecrackerHost(VmmConfig.from(env));
  await startHttpService(AppModule.forRoot(env), {
    port: env.HTTP_PORT,
    configure: (app) => {
      app.connectMicroservice(hostAgentGrpcOptions(env, internalTls));
    },
  });
});
