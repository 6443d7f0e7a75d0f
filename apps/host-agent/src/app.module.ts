import { DynamicModule, Module } from '@nestjs/common';
import { APP_INTERCEPTOR } from '@nestjs/core';
import { ConfigModule, HostAgentEnv } from '@kiln/config';
import { MessagingModule, natsAuthOf } from '@kiln/messaging';
import { TelemetryModule } from '@kiln/telemetry';
import { ControlPlaneModule } from './control-plane/control-plane.module';
import { EgressProxyModule } from './egress-proxy';
import { TemplateSnapshotHealthInterceptor } from './health/template-snapshot-health.interceptor';
import { hostResourceModules } from './host-modules';
import { ProxyModule } from './proxy/proxy.module';
import { SandboxModule } from './sandbox/sandbox.module';

export const SERVICE_NAME = 'host-agent';

@Module({})
export class AppModule {
  static forRoot(env: HostAgentEnv): DynamicModule {
    const host = hostResourceModules(env);
    const sandboxes = SandboxModule.register(host);
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(HostAgentEnv, env),
        TelemetryModule.forRoot({ service: SERVICE_NAME, logLevel: env.LOG_LEVEL }),
        MessagingModule.forRoot({ natsUrl: env.NATS_URL, name: SERVICE_NAME, auth: natsAuthOf(env) }),
        sandboxes,
        ControlPlaneModule.register(host, sandboxes),
        ProxyModule.register(sandboxes),
        // Domain rules of sandboxes' egress policies; the network pool redirects to env.KILN_EGRESS_PROXY_PORT.
        EgressProxyModule.register(host.network, { host: env.KILN_EGRESS_PROXY_HOST, port: env.KILN_EGRESS_PROXY_PORT }),
      ],
      // GET /health also reports each template's snapshot (see the interceptor for why not as a dependency).
      providers: [{ provide: APP_INTERCEPTOR, useClass: TemplateSnapshotHealthInterceptor }],
    };
  }
}
