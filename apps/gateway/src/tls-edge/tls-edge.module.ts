import { DynamicModule, Module } from '@nestjs/common';
import { TrafficModule } from '../traffic/traffic.module';
import { TLS_EDGE_CREDENTIALS, TlsEdgeListener } from './tls-edge.listener';
import { TlsEdgeCredentials } from './tls-credentials';

/**
 * The TLS listener for E2B_DOMAIN clients (`api.{domain}` and `{port}-{sandboxId}.{domain}` on one port). The
 * credentials are read before the app is created, so a bad certificate stops the start with one line naming the
 * setting; undefined leaves the listener off.
 */
@Module({})
export class TlsEdgeModule {
  static forRoot(credentials: TlsEdgeCredentials | undefined): DynamicModule {
    return {
      module: TlsEdgeModule,
      imports: [TrafficModule],
      providers: [{ provide: TLS_EDGE_CREDENTIALS, useValue: credentials }, TlsEdgeListener],
      exports: [TlsEdgeListener],
    };
  }
}
