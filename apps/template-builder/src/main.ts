import 'reflect-metadata';
import { TemplateBuilderEnv, loadConfig, runOrExit } from '@kiln/config';
import { startHttpService } from '@kiln/telemetry';
import { AppModule, SERVICE_NAME } from './app.module';

void runOrExit(SERVICE_NAME, async () => {
  const env = loadConfig(TemplateBuilderEnv);
  await startHttpService(AppModule.forRoot(env), { port: env.HTTP_PORT });
});
