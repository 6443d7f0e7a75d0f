import type { ConnectionOptions } from 'nats';
import { natsInboxPrefix } from './nats-permissions';

/** How a service authenticates to NATS (the NATS_* variables of NatsClientEnv); all unset: anonymous, plaintext. */
export interface NatsAuth {
  user?: string;
  password?: string;
  /** PEM CA bundle of the server's certificate: set, the connection requires TLS and verifies the server. */
  tlsCaFile?: string;
}

export interface NatsAuthEnv {
  NATS_USER?: string;
  NATS_PASSWORD?: string;
  NATS_TLS_CA_FILE?: string;
}

export function natsAuthOf(env: NatsAuthEnv): NatsAuth {
  return { user: env.NATS_USER, password: env.NATS_PASSWORD, tlsCaFile: env.NATS_TLS_CA_FILE };
}

/**
 * The connect options every Kiln connection (raw, Nest's client proxy and Nest's server) adds for `auth`. With a
 * user, replies come to that user's own inbox prefix, the only one its NATS permissions let it subscribe to.
 */
export function natsAuthOptions(auth: NatsAuth | undefined): Pick<ConnectionOptions, 'user' | 'pass' | 'tls' | 'inboxPrefix'> {
  if (!auth) return {};
  return {
    ...(auth.user ? { user: auth.user, pass: auth.password, inboxPrefix: natsInboxPrefix(auth.user) } : {}),
    ...(auth.tlsCaFile ? { tls: { caFile: auth.tlsCaFile } } : {}),
  };
}
