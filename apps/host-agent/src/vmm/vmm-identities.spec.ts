import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processStartTicks, VmmIdentityLeases } from './vmm-identities';
import { VmIdentityExhaustedError } from './vmm.errors';

describe('VmmIdentityLeases', () => {
  let dir: string;
  // Far above any uid this host uses, so no process runs as one of them.
  const base = 3_900_000_000;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-uid-leases-'));
  });

  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('gives every VM a uid of its own (gid = uid) until the range is used up, and a released one again', async () => {
    const leases = new VmmIdentityLeases(dir, base, 3);
    const held = [await leases.claim('vm-a'), await leases.claim('vm-b'), await leases.claim('vm-c')];
    expect(new Set(held.map((id) => id.uid)).size).toBe(3);
    for (const id of held) {
      expect(id.gid).toBe(id.uid);
      expect(id.uid).toBeGreaterThanOrEqual(base);
      expect(id.uid).toBeLessThan(base + 3);
    }
    await expect(leases.claim('vm-d')).rejects.toBeInstanceOf(VmIdentityExhaustedError);
    await leases.release(held[1], 'vm-b');
    expect(await leases.claim('vm-d')).toEqual(held[1]);
  });

  it('keeps a lease bound to a live VMM across agent processes, and takes over one whose VMM is gone', async () => {
    const vmm = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      const first = new VmmIdentityLeases(dir, base, 1);
      const identity = await first.claim('vm-live');
      await first.bind(identity, 'vm-live', vmm.pid!);
      const lease = JSON.parse(await readFile(join(dir, String(identity.uid)), 'utf8'));
      expect(lease).toEqual({ vmId: 'vm-live', pid: vmm.pid, startTicks: await processStartTicks(vmm.pid!) });

      // A restarted agent (new instance) finds the uid held while the VMM lives...
      const restarted = new VmmIdentityLeases(dir, base, 1);
      await expect(restarted.claim('vm-next')).rejects.toBeInstanceOf(VmIdentityExhaustedError);
      // ...and free again once it died while nobody watched.
      vmm.kill('SIGKILL');
      await new Promise((resolve) => vmm.once('exit', resolve));
      expect(await restarted.claim('vm-next')).toEqual(identity);
    } finally {
      vmm.kill('SIGKILL');
    }
  });

  it('leaves a lease alone that another VM took over, and treats an unreadable lease of an unused uid as stale', async () => {
    const leases = new VmmIdentityLeases(dir, base, 1);
    const identity = await leases.claim('vm-old');
    await leases.bind(identity, 'vm-new', process.pid);
    await leases.release(identity, 'vm-old');
    expect(JSON.parse(await readFile(join(dir, String(identity.uid)), 'utf8')).vmId).toBe('vm-new');

    await writeFile(join(dir, String(identity.uid)), 'not json');
    expect(await leases.claim('vm-after-crash')).toEqual(identity);
  });
});
