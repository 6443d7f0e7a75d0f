import { GrpcOptions, Transport } from '@nestjs/microservices';
import type { HostAgentEnv } from '@kiln/config';
import { InternalService, InternalTlsMaterial, grpcCallerInterceptor, grpcServerCredentials } from '@kiln/config/internal-tls';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PACKAGE, HOSTAGENT_PROTO_PATH } from '@kiln/proto';

/** Who may call this agent's gRPC: the scheduler places and manages sandboxes, the gateway may read them. */
export const GRPC_CALLERS: readonly InternalService[] = ['scheduler', 'gateway'];

/** Methods open to more callers than GRPC_CALLERS: the template builder runs builds, and may do nothing else. */
export const GRPC_METHOD_CALLERS: Readonly<Record<string, readonly InternalService[]>> = {
  [`/${HOSTAGENT_PACKAGE}.HostAgent/BuildTemplate`]: [...GRPC_CALLERS, 'template-builder'],
};

/** The services that may call a method (by its path, `/kiln.hostagent.v1.HostAgent/<Method>`). */
export function grpcCallersOf(methodPath: string): readonly InternalService[] {
  return GRPC_METHOD_CALLERS[methodPath] ?? GRPC_CALLERS;
}

/**
 * The HostAgent gRPC server as main.ts connects it. With internal mTLS (always in production) TLS requires a client
 * certificate from the internal CA (no certificate: the handshake fails, UNAVAILABLE) and the interceptor ends calls
 * from any other service's certificate with PERMISSION_DENIED; without it, plaintext (development and tests only).
 */
export function hostAgentGrpcOptions(env: Pick<HostAgentEnv, 'GRPC_HOST' | 'KILN_HOST_ADDRESS' | 'GRPC_PORT'>, internalTls: InternalTlsMaterial | undefined): GrpcOptions {
  return {
    transport: Transport.GRPC,
    options: {
      package: HOSTAGENT_PACKAGE,
      protoPath: HOSTAGENT_PROTO_PATH,
      url: `${env.GRPC_HOST ?? env.KILN_HOST_ADDRESS}:${env.GRPC_PORT}`,
      loader: { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] },
      ...(internalTls
        ? {
            credentials: grpcServerCredentials(internalTls),
            // grpc-js takes server interceptors from its constructor options, which Nest passes as channelOptions.
            channelOptions: { interceptors: [grpcCallerInterceptor(grpcCallersOf)] } as NonNullable<GrpcOptions['options']['channelOptions']>,
          }
        : {}),
    },
  };
}
