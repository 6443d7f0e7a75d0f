import type { GuestKernel } from './guest-kernel';

/**
 * Every clone of a template snapshot resumes with the template's kernel CRNG state (and this process's OpenSSL
 * state), so without a reseed two sandboxes read the same bytes from /dev/urandom. The host sends fresh bytes in
 * every /init; they are credited to the kernel and the CRNG is reseeded before the sandbox is handed out. Only with
 * guest duties on: on a host the seed is validated and dropped.
 */
export class EntropyReseed {
  constructor(private readonly kernel: GuestKernel | undefined) {}

  /** Returns whether the guest was reseeded. */
  reseed(seed: Buffer): boolean {
    if (!this.kernel) return false;
    this.kernel.reseedRandom(seed);
    return true;
  }
}
