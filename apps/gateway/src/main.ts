import 'reflect-metadata';
import { GatewayEnv, loadConfig, runOrExit } from '@kiln/config';
import { SERVICE_NAME } from './app.module';
import { startGateway } from './gateway';

void runOrExit(SERVICE_NAME, async () => {
  await startGateway(loadConfig(GatewayEnv));
});
