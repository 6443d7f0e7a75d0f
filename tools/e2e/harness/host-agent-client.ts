import { ChannelCredentials, credentials, loadPackageDefinition, Client, ServiceError } from '@grpc/grpc-js';
import { InternalTlsFiles, grpcChannelCredentials, loadInternalTls } from '@kiln/config/internal-tls';
import { loadSync } from '@grpc/proto-loader';
import { GRPC_LOADER_OPTIONS, HOSTAGENT_PROTO_PATH } from '@kiln/proto';
import type {
  CreateSandboxRequest,
  DestroySandboxResponse,
  HostInfoResponse,
  ListSandboxesResponse,
  SandboxInfo,
  UpdateSandboxNetworkRequest,
} from '@kiln/proto/hostagent';

type Unary<Req, Res> = (request: Req, callback: (error: ServiceError | null, response: Res) => void) => void;

interface RawHostAgentClient extends Client {
  createSandbox: Unary<CreateSandboxRequest, SandboxInfo>;
  destroySandbox: Unary<{ sandboxId: string }, DestroySandboxResponse>;
  getSandbox: Unary<{ sandboxId: string }, SandboxInfo>;
  listSandboxes: Unary<Record<string, never>, ListSandboxesResponse>;
  hostInfo: Unary<Record<string, never>, HostInfoResponse>;
  updateSandboxNetwork: Unary<UpdateSandboxNetworkRequest, SandboxInfo>;
}

/**
 * A plain grpc-js client for the host agent's HostAgent service, promisified. With `tls` (a test stack's scheduler
 * certificate, see internal-tls.ts) it speaks internal mTLS as the scheduler does; without, plaintext, which only an
 * agent started without KILN_INTERNAL_* (a benchmark's) accepts.
 */
export function hostAgentClient(address: string, tls?: InternalTlsFiles) {
  const definition = loadSync(HOSTAGENT_PROTO_PATH, { ...GRPC_LOADER_OPTIONS, includeDirs: [...GRPC_LOADER_OPTIONS.includeDirs] });
  const pkg = loadPackageDefinition(definition) as unknown as {
    kiln: { hostagent: { v1: { HostAgent: new (address: string, creds: ChannelCredentials) => RawHostAgentClient } } };
  };
  const channelCredentials = tls ? grpcChannelCredentials(loadInternalTls(tls), 'host-agent') : credentials.createInsecure();
  const raw = new pkg.kiln.hostagent.v1.HostAgent(address, channelCredentials);
  const call =
    <Req, Res>(method: Unary<Req, Res>) =>
    (request: Req) =>
      new Promise<Res>((resolve, reject) => method.call(raw, request, (error, response) => (error ? reject(error) : resolve(response))));
  return {
    createSandbox: call(raw.createSandbox),
    destroySandbox: call(raw.destroySandbox),
    getSandbox: call(raw.getSandbox),
    listSandboxes: () => call(raw.listSandboxes)({}),
    hostInfo: () => call(raw.hostInfo)({}),
    updateSandboxNetwork: call(raw.updateSandboxNetwork),
    close: () => raw.close(),
  };
}
