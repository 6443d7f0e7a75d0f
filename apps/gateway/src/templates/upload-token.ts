import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** How long an upload URL stays valid (E2B's presigned URLs: 1 hour; the SDK uploads at once). */
export const UPLOAD_TOKEN_TTL_MS = 60 * 60 * 1000;

/** Label of the key derivation: an upload token is never also a valid sandbox token (and the reverse). */
const UPLOAD_KEY_LABEL = 'kiln/template-file-upload/v1';

/** What an upload token authorises: one archive (`hash`) for one template of one team, until `expiresAt`. */
export interface UploadGrant {
  teamId: string;
  templateId: string;
  hash: string;
  expiresAt: number;
}

/**
 * Signs and checks the `token` of template file upload URLs. The SDK PUTs the archive there with no API key (as to a
 * presigned S3 URL), so the token is the only authority: an HMAC over team, template, hash and expiry, nothing
 * stored. Form: `<expiresAtMs>.<teamId>.<base64url HMAC>`.
 */
export class UploadTokens {
  private readonly key: Buffer;

  /** `secret` unset: a random key (tokens then only verify in this process). */
  constructor(secret: string | undefined) {
    this.key = createHmac('sha256', secret ?? randomBytes(32)).update(UPLOAD_KEY_LABEL).digest();
  }

  sign(grant: Omit<UploadGrant, 'expiresAt'>, now = Date.now()): string {
    const expiresAt = now + UPLOAD_TOKEN_TTL_MS;
    return `${expiresAt}.${grant.teamId}.${this.mac({ ...grant, expiresAt })}`;
  }

  /** The grant a token carries for this template and hash, or undefined when it is malformed, forged or expired. */
  verify(token: unknown, templateId: string, hash: string, now = Date.now()): UploadGrant | undefined {
    if (typeof token !== 'string' || token.length > 512) return undefined;
    const parts = token.split('.');
    if (parts.length !== 3 || !/^\d{1,16}$/.test(parts[0]) || parts[1].length === 0) return undefined;
    const grant: UploadGrant = { expiresAt: Number(parts[0]), teamId: parts[1], templateId, hash };
    const expected = Buffer.from(this.mac(grant));
    const given = Buffer.from(parts[2]);
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return undefined;
    return grant.expiresAt > now ? grant : undefined;
  }

  private mac(grant: UploadGrant): string {
    // Newline-separated: none of the fields can hold one (ids and hashes are validated before signing).
    return createHmac('sha256', this.key).update(`${grant.teamId}\n${grant.templateId}\n${grant.hash}\n${grant.expiresAt}`).digest('base64url');
  }
}
