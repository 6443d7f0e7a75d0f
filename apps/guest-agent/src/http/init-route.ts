import { isIP } from 'node:net';
import { GUEST_ENTROPY_SEED_BYTES, GUEST_NAMESERVERS_MAX, type GuestInitBody } from '@kiln/contracts/guest-init';
import { tokensEqual } from '../auth/access-token';
import type { AgentState } from '../runtime/agent-state';
import type { ClockSync } from '../runtime/clock-sync';
import type { EntropyReseed } from '../runtime/entropy-reseed';
import type { ResolverConfig } from '../runtime/resolver-config';
import { HttpError } from './http-io';

/** What /init changes on the machine itself (guest duties); all are no-ops on a host. */
export interface InitMachineDuties {
  clock: ClockSync;
  entropy: EntropyReseed;
  resolver: ResolverConfig;
}

/** What arrives: GuestInitBody's fields, each still to be checked. */
type InitBody = { [K in keyof GuestInitBody]?: unknown };

const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/**
 * POST /init: the host hands the sandbox its token, env vars, default user/workdir and the current time, on first
 * boot and again after every snapshot restore. Applying the same body twice leaves the same state (idempotent).
 * Once a token is set, only a caller that knows it (header or same token in the body) may re-initialise.
 * The entropy reseed comes first: nothing the sandbox does may draw randomness shared with its sibling clones.
 */
export async function applyInit(body: unknown, headerToken: string | undefined, state: AgentState, machine: InitMachineDuties): Promise<void> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new HttpError(400, 'init body must be a JSON object');
  }
  const init = body as InitBody;
  const current = state.accessTokenValue;
  if (current !== undefined) {
    const knowsToken =
      tokensEqual(current, headerToken) || (typeof init.accessToken === 'string' && tokensEqual(current, init.accessToken));
    if (!knowsToken) throw new HttpError(401, 'invalid access token');
  }
  if (init.accessToken !== undefined && typeof init.accessToken !== 'string') {
    throw new HttpError(400, 'accessToken must be a string');
  }
  if (init.envVars !== undefined) {
    if (typeof init.envVars !== 'object' || init.envVars === null || Array.isArray(init.envVars)) {
      throw new HttpError(400, 'envVars must be an object of strings');
    }
    for (const [key, value] of Object.entries(init.envVars)) {
      if (typeof value !== 'string' || key === '' || key.includes('=') || key.includes('\0')) {
        throw new HttpError(400, `invalid env var '${key}'`);
      }
    }
  }
  for (const field of ['defaultUser', 'defaultWorkdir', 'timestamp'] as const) {
    if (init[field] !== undefined && typeof init[field] !== 'string') throw new HttpError(400, `${field} must be a string`);
  }
  let seed: Buffer | undefined;
  if (init.entropySeed !== undefined) {
    if (typeof init.entropySeed !== 'string' || !BASE64.test(init.entropySeed)) throw new HttpError(400, 'entropySeed must be base64');
    seed = Buffer.from(init.entropySeed, 'base64');
    if (seed.length < GUEST_ENTROPY_SEED_BYTES.min || seed.length > GUEST_ENTROPY_SEED_BYTES.max) {
      throw new HttpError(400, `entropySeed must decode to ${GUEST_ENTROPY_SEED_BYTES.min}-${GUEST_ENTROPY_SEED_BYTES.max} bytes`);
    }
  }
  if (init.nameservers !== undefined) {
    const list = init.nameservers;
    if (!Array.isArray(list) || list.length > GUEST_NAMESERVERS_MAX || !list.every((ip) => typeof ip === 'string' && isIP(ip) !== 0)) {
      throw new HttpError(400, `nameservers must be a list of at most ${GUEST_NAMESERVERS_MAX} IP addresses`);
    }
  }
  let hostTimeMs: number | undefined;
  if (typeof init.timestamp === 'string' && init.timestamp !== '') {
    hostTimeMs = Date.parse(init.timestamp);
    if (Number.isNaN(hostTimeMs)) throw new HttpError(400, 'timestamp must be RFC 3339');
  }

  if (seed) {
    try {
      machine.entropy.reseed(seed);
    } catch (err) {
      throw new HttpError(500, `failed to reseed the guest's random number generator: ${(err as Error).message}`);
    } finally {
      seed.fill(0);
    }
  }
  if (hostTimeMs !== undefined) {
    try {
      machine.clock.syncTo(hostTimeMs);
    } catch (err) {
      throw new HttpError(500, `failed to set the clock: ${(err as Error).message}`);
    }
  }
  if (Array.isArray(init.nameservers)) {
    try {
      await machine.resolver.apply(init.nameservers as string[]);
    } catch (err) {
      throw new HttpError(500, `failed to write /etc/resolv.conf: ${(err as Error).message}`);
    }
  }
  if (typeof init.accessToken === 'string') state.setAccessToken(init.accessToken);
  if (init.envVars) for (const [k, v] of Object.entries(init.envVars as Record<string, string>)) state.envVars.set(k, v);
  if (typeof init.defaultUser === 'string' && init.defaultUser !== '') state.defaultUser = init.defaultUser;
  if (typeof init.defaultWorkdir === 'string' && init.defaultWorkdir !== '') state.defaultWorkdir = init.defaultWorkdir;
}
