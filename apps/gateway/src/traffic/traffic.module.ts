import { Module } from '@nestjs/common';
import { LifecycleRouteInvalidator } from './lifecycle-route-invalidator';
import { SandboxRouteCache } from './sandbox-route.cache';
import { SandboxTrafficProxy } from './sandbox-traffic.proxy';
import { HostProxyConnections } from './host-proxy-connections';

/** Sandbox-traffic routing: the route cache (also used for guest metrics), kept fresh by lifecycle events, and the proxy listener. */
@Module({
  providers: [SandboxRouteCache, LifecycleRouteInvalidator, HostProxyConnections, SandboxTrafficProxy],
  exports: [SandboxRouteCache, SandboxTrafficProxy, HostProxyConnections],
})
export class TrafficModule {}
