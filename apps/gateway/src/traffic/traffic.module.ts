import { Module } from '@nestjs/common';
import { LifecycleRouteInvalidator } from './lifecycle-route-invalidator';
import { SandboxRouteCache } from './sandbox-route.cache';
import { SandboxTrafficProxy } from './sandbox-traffic.proxy';

/** Sandbox-traffic routing: the route cache (also used for guest metrics), kept fresh by lifecycle events, and the proxy listener. */
@Module({
  providers: [SandboxRouteCache, LifecycleRouteInvalidator, SandboxTrafficProxy],
  exports: [SandboxRouteCache, SandboxTrafficProxy],
})
export class TrafficModule {}
