import { Injectable, OnApplicationShutdown } from '@nestjs/common';
import { ClientGrpcProxy, ClientProxyFactory, Transport } from '@nestjs/microservices';
import type { ChannelCredentials } from '@grpc/grpc-js';
import { SchedulerEnv } from '@kiln/config';
import { grpcChannelCredentials, internalTlsOf } from '@kiln/config/internal-tls';
import { ErrorCode, KilnError, errorCodeForGrpcStatus } from '@kiln/contracts';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PACKAGE, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import { HOST_AGENT_SERVICE_NAME, HostAgentClient } from '@kiln/proto/hostagent';
import { Observable, TimeoutError, firstValueFrom, timeout } from 'rxjs';

interface CachedClient {
  address: string;
  proxy: ClientGrpcProxy;
  service: HostAgentClient;
}

/**
 * One gRPC channel per host agent, keyed by host id and replaced when the address changes. With internal mTLS
 * configured (always in production) each channel presents the scheduler's certificate and accepts only a host
 * agent's (spiffe://kiln/host-agent from the internal CA).
 */
@Injectable()
export class HostAgentClients implements OnApplicationShutdown {
  private readonly clients = new Map<string, CachedClient>();
  /** Read once at start: a certificate rotated on disk is picked up on restart. */
  private readonly credentials?: ChannelCredentials;

  constructor(env: SchedulerEnv) {
    const internalTls = internalTlsOf(env);
    this.credentials = internalTls ? grpcChannelCredentials(internalTls, 'host-agent') : undefined;
  }

  for(hostId: string, address: string): HostAgentClient {
    const cached = this.clients.get(hostId);
    if (cached && cached.address === address) return cached.service;
    cached?.proxy.close();
    const proxy = ClientProxyFactory.create({
      transport: Transport.GRPC,
      options: {
        url: address,
        package: HOSTAGENT_PACKAGE,
        protoPath: HOSTAGENT_PROTO_PATH,
        loader: { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] },
        ...(this.credentials ? { credentials: this.credentials } : {}),
      },
    }) as ClientGrpcProxy;
    const service = proxy.getService<HostAgentClient>(HOST_AGENT_SERVICE_NAME);
    this.clients.set(hostId, { address, proxy, service });
    return service;
  }

  /** Awaits one unary call with a deadline, mapping gRPC status codes onto Kiln error codes. */
  async call<T>(what: string, call: Observable<T>, deadlineMs = 30_000): Promise<T> {
    try {
      return await firstValueFrom(call.pipe(timeout(deadlineMs)));
    } catch (error) {
      if (error instanceof TimeoutError) throw new KilnError(ErrorCode.Unavailable, `${what}: host agent did not answer within ${deadlineMs} ms`);
      const grpc = error as { code?: number; details?: string; message?: string; metadata?: { get(key: string): unknown[] } };
      // A host that knows when to try again (a template snapshot being retried) says so in trailing metadata.
      const retryAfter = Number(grpc.metadata?.get('retry-after')?.[0]);
      throw new KilnError(
        errorCodeForGrpcStatus(grpc.code),
        `${what}: ${grpc.details ?? grpc.message ?? String(error)}`,
        Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : undefined,
      );
    }
  }

  onApplicationShutdown(): void {
    for (const { proxy } of this.clients.values()) proxy.close();
    this.clients.clear();
  }
}
