import { Injectable, OnApplicationShutdown } from '@nestjs/common';
import { ChannelCredentials, Client, ClientReadableStream, ServiceError, credentials, loadPackageDefinition, status } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { TemplateBuilderEnv } from '@kiln/config';
import { grpcChannelCredentials, internalTlsOf } from '@kiln/config/internal-tls';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import type { BuildTemplateEvent, BuildTemplateRequest } from '@kiln/proto/hostagent';
import { BuildInfrastructureError, BuildRejectedError } from './template-build.errors';

/** The host a build runs on, as the Host table names it. */
export interface BuildHost {
  id: string;
  /** host:port of its agent's gRPC server. */
  address: string;
}

/**
 * One BuildTemplate call in flight. Iterating `events` yields what the host streams; it throws
 * BuildInfrastructureError (retry) or BuildRejectedError (do not) when the call fails, and ends after `cancel()`.
 */
export interface BuildCall {
  readonly events: AsyncIterable<BuildTemplateEvent>;
  cancel(): void;
}

/** Runs builds on host agents (the seam tests replace with a scripted host). */
export abstract class BuildHostClient {
  abstract start(host: BuildHost, request: BuildTemplateRequest): BuildCall;
}

/** gRPC statuses that say the request itself is wrong or not allowed: another attempt would get the same. */
const NOT_RETRYABLE = new Set<number>([status.INVALID_ARGUMENT, status.PERMISSION_DENIED, status.UNAUTHENTICATED, status.UNIMPLEMENTED]);

/** A failed call as a build failure: infrastructure (retried) unless the host said the request cannot succeed. */
export function buildCallFailure(host: BuildHost, error: unknown): BuildInfrastructureError | BuildRejectedError {
  const grpc = error as Partial<ServiceError>;
  const message = `host ${host.id} (${host.address}): ${grpc.details || grpc.message || String(error)}`;
  return grpc.code !== undefined && NOT_RETRYABLE.has(grpc.code) ? new BuildRejectedError(message) : new BuildInfrastructureError(message);
}

type HostAgentStub = Client & { buildTemplate(request: BuildTemplateRequest): ClientReadableStream<BuildTemplateEvent> };
type HostAgentConstructor = new (address: string, channelCredentials: ChannelCredentials, options?: object) => HostAgentStub;

/**
 * BuildTemplate over grpc-js, one channel per host address. With internal mTLS (always in production) it presents
 * spiffe://kiln/template-builder and accepts only a host agent's certificate. A raw grpc-js client rather than Nest's
 * proxy: a build is cancelled by cancelling its call, which the host turns into stopping the build VM.
 */
@Injectable()
export class GrpcBuildHostClient extends BuildHostClient implements OnApplicationShutdown {
  private readonly channels = new Map<string, HostAgentStub>();
  private readonly credentials: ChannelCredentials;
  private readonly HostAgent: HostAgentConstructor;

  constructor(env: TemplateBuilderEnv) {
    super();
    const internalTls = internalTlsOf(env);
    this.credentials = internalTls ? grpcChannelCredentials(internalTls, 'host-agent') : credentials.createInsecure();
    const definition = loadSync(HOSTAGENT_PROTO_PATH, { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] });
    const pkg = loadPackageDefinition(definition) as unknown as { kiln: { hostagent: { v1: { HostAgent: HostAgentConstructor } } } };
    this.HostAgent = pkg.kiln.hostagent.v1.HostAgent;
  }

  start(host: BuildHost, request: BuildTemplateRequest): BuildCall {
    let channel = this.channels.get(host.address);
    if (!channel) {
      // Keepalive pings find a host that vanished mid-build (power loss, partition), which TCP alone may not for hours.
      channel = new this.HostAgent(host.address, this.credentials, { 'grpc.keepalive_time_ms': 60_000, 'grpc.keepalive_timeout_ms': 20_000 });
      this.channels.set(host.address, channel);
    }
    const call = channel.buildTemplate(request);
    let cancelled = false;
    return {
      cancel: () => {
        cancelled = true;
        call.cancel();
      },
      events: (async function* () {
        try {
          for await (const event of call as AsyncIterable<BuildTemplateEvent>) yield event;
        } catch (error) {
          if (cancelled && (error as ServiceError).code === status.CANCELLED) return;
          throw buildCallFailure(host, error);
        }
      })(),
    };
  }

  onApplicationShutdown(): void {
    for (const channel of this.channels.values()) channel.close();
    this.channels.clear();
  }
}
