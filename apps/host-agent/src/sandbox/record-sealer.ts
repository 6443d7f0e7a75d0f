import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

const FORMAT = 'v1';
const IV_BYTES = 12;

/** A sealed value that does not open: a different key, or a damaged or forged record. */
export class SealedValueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SealedValueError';
  }
}

/**
 * Seals the secrets a sandbox record must keep on disk (its envd access token, which the traffic proxy checks and a
 * restarted agent needs back) with AES-256-GCM, under a key derived (HKDF-SHA256) from the host's state key. The
 * sandbox id is bound in as associated data, so a sealed token cannot be moved to another sandbox's record.
 */
export class RecordSealer {
  private readonly key: Buffer;

  constructor(stateKey: string) {
    this.key = Buffer.from(hkdfSync('sha256', stateKey, 'kiln-host-agent', 'sandbox-record-secrets/v1', 32));
  }

  seal(sandboxId: string, plaintext: string): string {
    const iv = randomBytes(IV_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.key, iv).setAAD(Buffer.from(sandboxId));
    const sealed = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
    return [FORMAT, iv, sealed, cipher.getAuthTag()].map((part) => (typeof part === 'string' ? part : part.toString('base64url'))).join('.');
  }

  open(sandboxId: string, sealed: string): string {
    const [format, iv, data, tag] = sealed.split('.');
    if (format !== FORMAT || !iv || data === undefined || !tag) throw new SealedValueError('not a sealed value this agent writes');
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.key, Buffer.from(iv, 'base64url')).setAAD(Buffer.from(sandboxId));
      decipher.setAuthTag(Buffer.from(tag, 'base64url'));
      return Buffer.concat([decipher.update(Buffer.from(data, 'base64url')), decipher.final()]).toString('utf8');
    } catch {
      throw new SealedValueError('sealed value does not open with this host state key');
    }
  }
}
