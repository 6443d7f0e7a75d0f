/**
 * What the egress proxy learns from the first bytes a guest sends on a redirected connection:
 *  - `incomplete`: not enough bytes yet to tell (read more, within the proxy's bound and deadline);
 *  - `found`: the destination name (lower case, no trailing dot, no port);
 *  - `absent`: the bytes are complete or malformed and carry no usable name (the IP rules decide alone).
 */
export type PeekedName = { kind: 'incomplete' } | { kind: 'found'; name: string } | { kind: 'absent'; why: string };

export const INCOMPLETE: PeekedName = Object.freeze({ kind: 'incomplete' });

export function absent(why: string): PeekedName {
  return { kind: 'absent', why };
}

const HOST_NAME = /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

/** A DNS host name as a peer sent it, normalised; `absent` when it is not one (IP literals, junk, IDN in Unicode). */
export function hostName(raw: string): PeekedName {
  const name = raw.trim().toLowerCase().replace(/\.$/, '');
  if (!HOST_NAME.test(name) || /^[\d.]+$/.test(name)) return absent(`${JSON.stringify(raw.slice(0, 80))} is not a host name`);
  return { kind: 'found', name };
}
