import { constants } from 'node:fs';
import { access, open, stat } from 'node:fs/promises';
import type { VmmConfig } from '../vmm.config';
import { FirecrackerUnavailableError } from './firecracker.errors';

/** ELF magic and class 2 (64-bit): an uncompressed vmlinux; a bzImage starts with a boot sector instead. */
const ELF64_HEADER = Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02]);

export interface FirecrackerHostProbe {
  /** Where KVM is: a test points it at a file that is not a KVM device. */
  kvmDevice?: string;
}

/**
 * Checks that this host can run Firecracker VMs as configured, before the agent starts anything: the Firecracker
 * binary and the jailer (executable files), an uncompressed ELF kernel, and a /dev/kvm that is a character device
 * this process may open read-write. Rejects with FirecrackerUnavailableError naming everything missing, in one line.
 * (A KVM that opens but cannot run guests, like this machine's PVM, is only found by booting one: not checked here.)
 */
export async function checkFirecrackerHost(config: VmmConfig, probe: FirecrackerHostProbe = {}): Promise<void> {
  const { binary, jailerBinary, kernelPath } = config.firecracker;
  const missing: string[] = [];
  const executable = async (path: string, variable: string, what: string) => {
    try {
      const info = await stat(path);
      if (!info.isFile()) return missing.push(`${what} at ${variable}=${path} is not a file`);
      await access(path, constants.X_OK);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      missing.push(code === 'ENOENT' ? `no ${what} at ${variable}=${path}` : `${what} at ${variable}=${path} is not executable`);
    }
  };
  await executable(binary, 'KILN_FIRECRACKER_BINARY', 'firecracker binary');
  await executable(jailerBinary, 'KILN_JAILER_BINARY', 'jailer binary');

  try {
    const file = await open(kernelPath, 'r');
    try {
      const header = Buffer.alloc(ELF64_HEADER.length);
      const { bytesRead } = await file.read(header, 0, header.length, 0);
      if (bytesRead < header.length || !header.equals(ELF64_HEADER)) {
        missing.push(`kernel at KILN_FIRECRACKER_KERNEL=${kernelPath} is not an uncompressed 64-bit ELF vmlinux`);
      }
    } finally {
      await file.close();
    }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    missing.push(code === 'ENOENT' ? `no kernel at KILN_FIRECRACKER_KERNEL=${kernelPath}` : `kernel at KILN_FIRECRACKER_KERNEL=${kernelPath} is unreadable (${code})`);
  }

  const kvm = probe.kvmDevice ?? '/dev/kvm';
  try {
    if (!(await stat(kvm)).isCharacterDevice()) {
      missing.push(`${kvm} is not a character device`);
    } else {
      await (await open(kvm, constants.O_RDWR)).close();
    }
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    missing.push(code === 'ENOENT' ? `no ${kvm}` : `${kvm} cannot be opened read-write (${code})`);
  }

  if (missing.length > 0) {
    throw new FirecrackerUnavailableError(`KILN_VMM=firecracker but this host cannot run it: ${missing.join('; ')}`);
  }
}
