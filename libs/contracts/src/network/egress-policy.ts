import { ErrorCode } from '../errors/error-codes';
import { KilnError } from '../errors/kiln-error';

/**
 * A sandbox's egress rules in E2B's shape, as every layer carries them (create command, database row, gRPC request,
 * host record). Entries are normalised once, at the gateway, by `normaliseEgressPolicy`:
 *  - `allowOut`: IPv4 CIDR blocks (`a.b.c.d/n`, host bits cleared) and domain patterns (`example.com`,
 *    `*.example.com`, lower case). Allowed entries win over denied ones.
 *  - `denyOut`: IPv4 CIDR blocks only (E2B: "domain names are not supported for deny rules").
 * `allow_internet_access: false` is `denyOut: ['0.0.0.0/0']` (see `effectiveEgressPolicy`).
 * No user rule opens the platform floor (host services, other sandboxes, private and special ranges).
 */
export interface EgressPolicy {
  allowOut: string[];
  denyOut: string[];
}

/** What a sandbox's network is, as stored with it and shown in `GET /sandboxes/{id}`. */
export interface SandboxNetworkSettings {
  egress: EgressPolicy;
  /** As the caller gave it: null when it was not set (E2B's `allowInternetAccess` in the sandbox detail). */
  allowInternetAccess: boolean | null;
  /** False: requests to the sandbox's user ports need the `e2b-traffic-access-token` header. */
  allowPublicTraffic: boolean;
  /** Host header sent to the sandbox's user ports instead of the caller's; `${PORT}` is the port. */
  maskRequestHost?: string;
}

/** Most entries one policy may hold (allowOut and denyOut together). */
export const MAX_EGRESS_RULES = 1_000;

export const ALL_IPV4 = '0.0.0.0/0';

export const EMPTY_EGRESS_POLICY: EgressPolicy = Object.freeze({ allowOut: [], denyOut: [] }) as EgressPolicy;

export const DEFAULT_NETWORK_SETTINGS: SandboxNetworkSettings = Object.freeze({
  egress: EMPTY_EGRESS_POLICY,
  allowInternetAccess: null,
  allowPublicTraffic: true,
}) as SandboxNetworkSettings;

/** The rules a host enforces: the caller's, plus a deny of everything when internet access is off. */
export function effectiveEgressPolicy(settings: Pick<SandboxNetworkSettings, 'egress' | 'allowInternetAccess'>): EgressPolicy {
  const { allowOut, denyOut } = settings.egress;
  if (settings.allowInternetAccess !== false || denyOut.includes(ALL_IPV4)) return { allowOut: [...allowOut], denyOut: [...denyOut] };
  return { allowOut: [...allowOut], denyOut: [...denyOut, ALL_IPV4] };
}

/** A policy entry that is not an IPv4 address, CIDR block or (in allowOut) domain pattern; or too many entries. */
export class EgressRuleError extends KilnError {
  constructor(message: string) {
    super(ErrorCode.InvalidArgument, message);
    this.name = 'EgressRuleError';
  }
}

const DOMAIN_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/** True for a domain pattern entry (as opposed to an IPv4 CIDR). */
export function isDomainRule(entry: string): boolean {
  return /[a-z*]/i.test(entry) && !entry.includes(':');
}

/** `*.example.com` matches names under example.com (not example.com itself); `example.com` matches itself only. */
export function domainMatches(pattern: string, name: string): boolean {
  const host = name.toLowerCase().replace(/\.$/, '');
  if (pattern.startsWith('*.')) return host.endsWith(pattern.slice(1)) && host.length > pattern.length - 1;
  return host === pattern;
}

/** Splits a normalised policy for enforcement: address sets for nftables, names for the egress proxy. */
export function splitEgressPolicy(policy: EgressPolicy): { allowCidrs: string[]; allowDomains: string[]; denyCidrs: string[] } {
  return {
    allowCidrs: policy.allowOut.filter((e) => !isDomainRule(e)),
    allowDomains: policy.allowOut.filter(isDomainRule),
    denyCidrs: [...policy.denyOut],
  };
}

/**
 * Validates and normalises user input into an EgressPolicy. Throws EgressRuleError (400) naming the first bad
 * entry and its field. Idempotent: a normalised policy normalises to itself.
 */
export function normaliseEgressPolicy(input: { allowOut?: unknown; denyOut?: unknown }): EgressPolicy {
  const allow = listOf(input.allowOut, 'allowOut');
  const deny = listOf(input.denyOut, 'denyOut');
  if (allow.length + deny.length > MAX_EGRESS_RULES) {
    throw new EgressRuleError(`network: at most ${MAX_EGRESS_RULES} allowOut and denyOut entries together, got ${allow.length + deny.length}`);
  }
  return {
    allowOut: dedupe(allow.map((e) => normaliseEntry(e, 'allowOut', true))),
    denyOut: dedupe(deny.map((e) => normaliseEntry(e, 'denyOut', false))),
  };
}

function listOf(value: unknown, field: string): unknown[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new EgressRuleError(`network.${field} must be a list of strings`);
  return value;
}

function normaliseEntry(raw: unknown, field: string, domainsAllowed: boolean): string {
  const bad = (why: string) => new EgressRuleError(`network.${field}: ${JSON.stringify(raw)} ${why}`);
  if (typeof raw !== 'string') throw bad('is not a string');
  const entry = raw.trim().toLowerCase();
  if (entry.length === 0 || entry.length > 253) throw bad('is not an IPv4 address, CIDR block or domain name');
  if (entry.includes(':')) throw bad('is an IPv6 entry: sandboxes have no IPv6 egress, so IPv6 rules are not accepted');
  const cidr = /^(\d{1,3}(?:\.\d{1,3}){3})(?:\/(\d{1,2}))?$/.exec(entry);
  if (cidr) {
    const address = parseIpv4(cidr[1]);
    if (address === undefined) throw bad('is not a valid IPv4 address');
    const prefix = cidr[2] === undefined ? 32 : Number(cidr[2]);
    if (prefix > 32) throw bad('has a prefix longer than /32');
    // Host bits are cleared, as routers do: "10.1.2.3/8" means 10.0.0.0/8.
    const size = 2 ** (32 - prefix);
    return `${formatIpv4(Math.floor(address / size) * size)}/${prefix}`;
  }
  if (/^[\d./]+$/.test(entry)) throw bad('is not a valid IPv4 address or CIDR block');
  if (!domainsAllowed) throw bad('is a domain name: denyOut takes IP addresses and CIDR blocks only');
  if (entry === '*' || entry === '*.') throw bad('matches every name: use 0.0.0.0/0 to allow everything');
  const name = entry.startsWith('*.') ? entry.slice(2) : entry;
  const labels = name.replace(/\.$/, '').split('.');
  if (labels.length < 2 || !labels.every((l) => DOMAIN_LABEL.test(l)) || /^\d+$/.test(labels[labels.length - 1])) {
    throw bad('is not an IPv4 address, CIDR block or domain name (example.com or *.example.com)');
  }
  return (entry.startsWith('*.') ? '*.' : '') + labels.join('.');
}

export function parseIpv4(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length !== 4 || parts.some((p) => !/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255)) return undefined;
  return parts.reduce((acc, p) => acc * 256 + Number(p), 0);
}

export function formatIpv4(value: number): string {
  return [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join('.');
}

function dedupe(values: string[]): string[] {
  return [...new Set(values)];
}

/** The Host header a masked user-port request carries: `${PORT}` in the mask becomes the port. */
export function maskedHost(mask: string, port: number): string {
  return mask.split('${PORT}').join(String(port));
}
