import { readFileSync } from 'node:fs';

export const MIB = 1024 * 1024;

/**
 * How far above its warmed-up baseline a process's resident memory may be after the run and a settle period:
 * +25% or +40 MiB, whichever is larger. V8 keeps heap pages it has grown into for a while after the garbage is gone
 * (and JIT code, inline caches and Fastify/Nest route caches stay), so a process that leaks nothing still sits a few
 * MiB to a few tens of MiB above a warm baseline; 40 MiB is the floor that absorbs that for a ~60-150 MiB Node process.
 * A per-request leak does not hide under it: 10,000 requests leaking even 4 KiB each is 40 MiB, and the fuzz's
 * bodies run to 1.6 MB, so anything held per oversized or failed request shows as hundreds of MiB.
 */
export function rssTolerance(baselineBytes: number): number {
  return Math.max(baselineBytes * 0.25, 40 * MIB);
}

/** Resident set size of a process on this machine, from /proc/<pid>/status (VmRSS, kB). */
export function rssOfPid(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(match[1]) * 1024;
}

export function mib(bytes: number): string {
  return `${(bytes / MIB).toFixed(1)} MiB`;
}
