import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { VmSpec } from '../../src/vmm/vmm-driver';

/** A VM spec the fake Firecracker accepts: a 4 KiB raw disk of its own under `base/<id>`, no network unless given. */
export async function fakeVmSpec(base: string, id: string, overrides: Partial<VmSpec> = {}): Promise<VmSpec> {
  const dir = join(base, id);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'rootfs.raw'), Buffer.alloc(4096));
  return {
    id,
    vcpus: 2,
    memoryMib: 256,
    kernelPath: '/ignored/bzImage',
    initrdPath: '',
    kernelArgs: 'console=ttyS0 reboot=k panic=1',
    rootDisk: { path: join(dir, 'rootfs.raw'), format: 'raw' },
    stateDir: join(dir, 'state'),
    serialLogPath: join(dir, 'serial.log'),
    ...overrides,
  };
}
