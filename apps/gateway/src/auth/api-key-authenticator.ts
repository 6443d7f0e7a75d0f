import { Injectable } from '@nestjs/common';
import { API_KEY_PATTERN, hashApiKey } from '@kiln/contracts';
import { ApiKeyRepository, AuthenticatedTeam } from '@kiln/db';

/** How long a successful key lookup is reused; a revoked key stops working within this window. */
const AUTH_CACHE_TTL_MS = 10_000;
const AUTH_CACHE_MAX_ENTRIES = 10_000;

/**
 * Turns a presented API key into its team. Keys are checked for E2B's shape before
 * touching the database, and successful lookups are cached briefly (by hash, never
 * the key itself) so a busy client does not cost one query per request.
 */
@Injectable()
export class ApiKeyAuthenticator {
  private readonly cache = new Map<string, { team: AuthenticatedTeam; expiresAt: number }>();

  constructor(private readonly apiKeys: ApiKeyRepository) {}

  async authenticate(presentedKey: string): Promise<AuthenticatedTeam | null> {
    if (!API_KEY_PATTERN.test(presentedKey)) return null;
    const hash = hashApiKey(presentedKey);
    const now = Date.now();
    const cached = this.cache.get(hash);
    if (cached && cached.expiresAt > now) return cached.team;
    const team = await this.apiKeys.authenticate(presentedKey);
    if (!team) {
      this.cache.delete(hash);
      return null;
    }
    if (this.cache.size >= AUTH_CACHE_MAX_ENTRIES) this.evictExpired(now);
    this.cache.set(hash, { team, expiresAt: now + AUTH_CACHE_TTL_MS });
    return team;
  }

  private evictExpired(now: number): void {
    for (const [hash, entry] of this.cache) if (entry.expiresAt <= now) this.cache.delete(hash);
    if (this.cache.size >= AUTH_CACHE_MAX_ENTRIES) this.cache.clear();
  }
}
