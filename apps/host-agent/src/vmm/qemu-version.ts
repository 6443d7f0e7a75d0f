import { runHostCommand } from '../host-command/host-command';

export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

/** `QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)` → 7.2.19; undefined when there is none. */
export function parseQemuVersion(versionOutput: string): QemuVersion | undefined {
  const match = /version (\d+)\.(\d+)(?:\.(\d+))?/.exec(versionOutput);
  if (!match) return undefined;
  return { major: Number(match[1]), minor: Number(match[2]), micro: Number(match[3] ?? 0) };
}

export function qemuVersionAtLeast(version: QemuVersion, major: number, minor: number): boolean {
  return version.major > major || (version.major === major && version.minor >= minor);
}

/** What `qemu --version` printed, first line (the acceleration probe's cache key; host info). */
export async function readQemuVersionLine(qemuBinary: string): Promise<string> {
  const { stdout } = await runHostCommand(qemuBinary, ['--version'], { timeoutMs: 10_000 });
  return stdout.split('\n')[0]?.trim() ?? '';
}

/**
 * The flags that drop QEMU's privileges after start-up, in the spelling this QEMU accepts: `-chroot` was removed
 * in 9.0 for `-run-with chroot=` (8.1+), and `-runas` is deprecated since 9.1 for `-run-with user=`.
 */
export function privilegeDropArgs(version: QemuVersion, drop: { runAs?: string; chrootTo?: string }): string[] {
  const runWith: string[] = [];
  const args: string[] = [];
  if (drop.runAs) {
    if (qemuVersionAtLeast(version, 9, 1)) runWith.push(`user=${drop.runAs}`);
    else args.push('-runas', drop.runAs);
  }
  if (drop.chrootTo) {
    // QEMU option values escape a comma by doubling it.
    if (qemuVersionAtLeast(version, 8, 1)) runWith.push(`chroot=${drop.chrootTo.replaceAll(',', ',,')}`);
    else args.push('-chroot', drop.chrootTo);
  }
  if (runWith.length > 0) args.push('-run-with', runWith.join(','));
  return args;
}
