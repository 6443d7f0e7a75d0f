/**
 * The body of the guest agent's POST /init: envd's fields plus Kiln's `entropySeed`. The host agent sends it
 * right after every snapshot restore; the guest agent validates and applies it. Kept free of imports so the
 * guest agent's bundle takes it without the rest of the contracts (subpath `@kiln/contracts/guest-init`).
 */
export interface GuestInitBody {
  /** Token every later request must carry (X-Access-Token); empty clears it. */
  accessToken?: string;
  /** Added to every process the agent starts. */
  envVars?: Record<string, string>;
  defaultUser?: string;
  defaultWorkdir?: string;
  /** Host wall clock (RFC 3339): a restored guest wakes up with the template's time. */
  timestamp?: string;
  /**
   * Fresh random bytes, base64: every clone of a snapshot resumes with the template's CRNG state and would draw the
   * same bytes as its siblings until reseeded.
   */
  entropySeed?: string;
  /**
   * Kiln's addition: the DNS resolvers the guest's /etc/resolv.conf lists (IP addresses, at most
   * GUEST_NAMESERVERS_MAX). Sent on every create, so clones of one template follow the host they run on.
   */
  nameservers?: string[];
}

/** glibc reads at most three `nameserver` lines. */
export const GUEST_NAMESERVERS_MAX = 3;

/** Decoded size limits of `entropySeed`, and what the host agent sends (a full CRNG reseed needs 32). */
export const GUEST_ENTROPY_SEED_BYTES = { min: 16, max: 512, sent: 64 } as const;
