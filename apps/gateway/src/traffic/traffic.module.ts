import { Module } from '@nestjs/common';
import { SandboxRouteCache } from './sandbox-route.cache';
import { SandboxTrafficProxy } from './sandbox-traffic.proxy';

/** Sandbox-traffic routing: the route cache (also used for guest metrics) and the proxy listener. */
@Module({
  providers: [SandboxRouteCache, SandboxTrafficProxy],
  exports: [SandboxRouteCache, SandboxTrafficProxy],
})
export class TrafficModule {}
