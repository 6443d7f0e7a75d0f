import { DynamicModule, Module } from '@nestjs/common';
import { SandboxTrafficProxy } from './sandbox-traffic-proxy';

@Module({})
export class ProxyModule {
  static register(sandboxes: DynamicModule): DynamicModule {
    return { module: ProxyModule, imports: [sandboxes], providers: [SandboxTrafficProxy] };
  }
}
