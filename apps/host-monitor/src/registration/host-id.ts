/** What a host id may be: a hostname-like token that is also a valid NATS subject tail and KV key. */
export const HOST_ID_PATTERN = /^[a-zA-Z0-9._-]{1,63}$/;

export function isHostId(value: unknown): value is string {
  return typeof value === 'string' && HOST_ID_PATTERN.test(value) && !value.startsWith('.') && !value.endsWith('.') && !value.includes('..');
}
