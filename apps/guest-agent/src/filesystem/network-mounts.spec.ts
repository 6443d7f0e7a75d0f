import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { networkFilesystemName, networkMountOf } from './network-mounts';

describe('network mounts (envd >= 0.6.4 refuses to watch them unless asked)', () => {
  it.each([
    [0x6969, 'NFS'],
    [0xff534d42, 'CIFS'],
    [0x517b, 'SMB'],
    [0xfe534d42, 'SMB2'],
    [0x65735546, 'FUSE'],
    // The same CIFS magic as a sign-extended 64-bit word.
    [-0xacb2be, 'CIFS'],
  ])('statfs type %s is %s', (fsType, name) => {
    expect(networkFilesystemName(fsType)).toBe(name);
  });

  it.each([0xef53 /* ext4 */, 0x01021994 /* tmpfs */, 0x9fa0 /* proc */, 0x794c7630 /* overlayfs */])(
    'statfs type %s is local',
    (fsType) => {
      expect(networkFilesystemName(fsType)).toBeUndefined();
    },
  );

  it('finds a real local directory local', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kiln-mounts-'));
    try {
      await expect(networkMountOf(dir)).resolves.toBeUndefined();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('fails for a missing path', async () => {
    await expect(networkMountOf('/no/such/dir/for/statfs')).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
