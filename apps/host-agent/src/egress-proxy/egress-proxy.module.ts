import { Module, type DynamicModule } from '@nestjs/common';
import { EgressProxy } from './egress-proxy.service';
import { EGRESS_PROXY_OPTIONS, resolveEgressProxyOptions, type EgressProxyOptions } from './egress-proxy.options';

/**
 * The egress proxy that enforces domain rules. `network` is the host's NetworkModule instance: the proxy reads the
 * slots' policies and the platform floor from its pool, whose `egressProxyPort` must equal `options.port`.
 */
@Module({})
export class EgressProxyModule {
  static register(network: DynamicModule, options: Partial<EgressProxyOptions> & Pick<EgressProxyOptions, 'port'>): DynamicModule {
    return {
      module: EgressProxyModule,
      imports: [network],
      providers: [{ provide: EGRESS_PROXY_OPTIONS, useFactory: () => resolveEgressProxyOptions(options) }, EgressProxy],
      exports: [EgressProxy],
    };
  }
}
