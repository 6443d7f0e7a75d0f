import { join } from 'node:path';

/** Directory holding the .proto sources; the gRPC server and clients load hostagent.proto from here at runtime. */
export const PROTO_ROOT = join(__dirname, '..', '..', '..', 'proto');
export const HOSTAGENT_PROTO_PATH = join(PROTO_ROOT, 'hostagent', 'v1', 'hostagent.proto');
export const HOSTAGENT_PACKAGE = 'kiln.hostagent.v1';

/** proto-loader options shared by every gRPC server and client so both sides agree on shapes. */
export const GRPC_LOADER_OPTIONS = {
  keepCase: false,
  longs: Number,
  enums: Number,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
} as const;
