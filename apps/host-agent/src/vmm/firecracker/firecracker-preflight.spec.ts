import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmmConfig } from '../vmm.config';
import { FirecrackerUnavailableError } from './firecracker.errors';
import { checkFirecrackerHost } from './firecracker-preflight';

describe('checkFirecrackerHost', () => {
  let dir: string;
  const config = (overrides: Partial<VmmConfig['firecracker']> = {}) =>
    new VmmConfig(dir, 'qemu-system-x86_64', 'kvm', 128, 1000, undefined, 'firecracker', {
      binary: join(dir, 'firecracker'),
      jailerBinary: join(dir, 'jailer'),
      kernelPath: join(dir, 'vmlinux'),
      chrootBase: join(dir, 'jail'),
      ...overrides,
    });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fc-preflight-'));
    for (const name of ['firecracker', 'jailer']) {
      await writeFile(join(dir, name), '#!/bin/sh\n');
      await chmod(join(dir, name), 0o755);
    }
    await writeFile(join(dir, 'not-executable'), '');
    await writeFile(join(dir, 'vmlinux'), Buffer.concat([Buffer.from([0x7f, 0x45, 0x4c, 0x46, 0x02]), Buffer.alloc(59)]));
    // A bzImage starts with a boot sector, not ELF.
    await writeFile(join(dir, 'bzImage'), Buffer.concat([Buffer.alloc(0x1fe), Buffer.from([0x55, 0xaa])]));
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('passes when every piece is there (control: a character device that opens read-write stands in for KVM)', async () => {
    await expect(checkFirecrackerHost(config(), { kvmDevice: '/dev/null' })).resolves.toBeUndefined();
  });

  it('names every missing piece in one line', async () => {
    const error = await checkFirecrackerHost(
      config({ binary: join(dir, 'nope', 'firecracker'), jailerBinary: join(dir, 'not-executable'), kernelPath: join(dir, 'bzImage') }),
      { kvmDevice: join(dir, 'vmlinux') },
    ).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(FirecrackerUnavailableError);
    const message = (error as Error).message;
    expect(message.split('\n')).toHaveLength(1);
    expect(message).toBe(
      `KILN_VMM=firecracker but this host cannot run it: no firecracker binary at KILN_FIRECRACKER_BINARY=${dir}/nope/firecracker; ` +
        `jailer binary at KILN_JAILER_BINARY=${dir}/not-executable is not executable; ` +
        `kernel at KILN_FIRECRACKER_KERNEL=${dir}/bzImage is not an uncompressed 64-bit ELF vmlinux; ${dir}/vmlinux is not a character device`,
    );
  });

  it('reports a missing kernel and a missing KVM device', async () => {
    await expect(checkFirecrackerHost(config({ kernelPath: join(dir, 'gone') }), { kvmDevice: join(dir, 'no-kvm') })).rejects.toThrow(
      `no kernel at KILN_FIRECRACKER_KERNEL=${dir}/gone; no ${dir}/no-kvm`,
    );
  });
});
