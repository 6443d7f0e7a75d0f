import { createHash, randomBytes } from 'node:crypto';

/** E2B-shaped API key: `e2b_` + 40 hex chars, accepted by every SDK release's client-side check. */
export const API_KEY_PREFIX = 'e2b_';
export const API_KEY_PATTERN = /^e2b_[0-9a-f]{40}$/;

export function generateApiKey(): string {
  return API_KEY_PREFIX + randomBytes(20).toString('hex');
}

/** Only this hash is stored; keys carry 160 random bits, so an unsalted SHA-256 is not guessable. */
export function hashApiKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

/** What is shown to humans to tell keys apart, never enough to use one. */
export function displayPrefixOf(key: string): string {
  return key.slice(0, API_KEY_PREFIX.length + 6);
}
