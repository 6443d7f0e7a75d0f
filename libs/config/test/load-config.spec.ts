import { ConfigError, GatewayEnv, HostAgentEnv, HostVmmEnv, SchedulerEnv, describeError, ipListEntries, loadConfig, pauseDeadlineMs, resumeDeadlineMs, retryWithBackoff } from '../src';

describe('loadConfig', () => {
  it('applies defaults and converts numbers', () => {
    const env = loadConfig(GatewayEnv, { DATABASE_URL: 'postgresql://db:5432/kiln', HTTP_PORT: '8080', KILN_DOMAIN: '' });
    expect(env).toMatchObject({ HTTP_PORT: 8080, SANDBOX_PROXY_PORT: 3080, KILN_DOMAIN: 'localhost', NATS_URL: 'nats://127.0.0.1:4222' });
  });

  it('names every missing or invalid variable in one line', () => {
    let error: unknown;
    try {
      loadConfig(HostAgentEnv, { GRPC_PORT: '70000', KILN_DATA_DIR: 'relative/path', KILN_VMM_ACCEL: 'hvf' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message.split('\n')).toHaveLength(1);
    for (const name of ['GRPC_PORT', 'KILN_DATA_DIR', 'KILN_VMM_ACCEL', 'KILN_HOST_STATE_KEY']) expect(message).toContain(name);
  });

  it('reads boolean variables from their text ("false" is false) and names a value that is neither', () => {
    const stateKey = { KILN_HOST_STATE_KEY: 'a-host-state-key-of-thirty-two-chars' };
    expect(loadConfig(HostAgentEnv, stateKey).KILN_CLONE_POOL_WARM).toBe(false);
    expect(loadConfig(HostAgentEnv, { ...stateKey, KILN_CLONE_POOL_WARM: 'true' }).KILN_CLONE_POOL_WARM).toBe(true);
    expect(loadConfig(HostAgentEnv, { ...stateKey, KILN_CLONE_POOL_WARM: 'false' }).KILN_CLONE_POOL_WARM).toBe(false);
    expect(loadConfig(HostAgentEnv, { ...stateKey, KILN_CLONE_POOL_WARM: '0' }).KILN_CLONE_POOL_WARM).toBe(false);
    expect(loadConfig(HostAgentEnv, { ...stateKey, KILN_CLONE_POOL_WARM: 'On' }).KILN_CLONE_POOL_WARM).toBe(true);
    expect(() => loadConfig(HostAgentEnv, { ...stateKey, KILN_CLONE_POOL_WARM: 'sometimes' })).toThrow(/KILN_CLONE_POOL_WARM must be true or false/);
  });

  it("takes the host agent's fleet settings: a required state key, an optional join token, disk capacity 0 = detect", () => {
    const stateKey = { KILN_HOST_STATE_KEY: 'a-host-state-key-of-thirty-two-chars' };
    const env = loadConfig(HostAgentEnv, stateKey);
    expect(env).toMatchObject({ KILN_JOIN_TOKEN: undefined, KILN_CAPACITY_DISK_MIB: 0 });
    expect(loadConfig(HostAgentEnv, { ...stateKey, KILN_JOIN_TOKEN: 'kjt1.payload.signature', KILN_CAPACITY_DISK_MIB: '20480' })).toMatchObject({
      KILN_JOIN_TOKEN: 'kjt1.payload.signature',
      KILN_CAPACITY_DISK_MIB: 20480,
    });
    expect(() => loadConfig(HostAgentEnv, {})).toThrow(/KILN_HOST_STATE_KEY must be longer than or equal to 32 characters/);
    expect(() => loadConfig(HostAgentEnv, { KILN_HOST_STATE_KEY: 'too-short' })).toThrow(/KILN_HOST_STATE_KEY must be longer than or equal to 32 characters \(got 9 characters, not shown\)/);
    expect(() => loadConfig(HostAgentEnv, { ...stateKey, KILN_JOIN_TOKEN: 'kjt1.short' })).toThrow(/KILN_JOIN_TOKEN must be longer than or equal to 16 characters \(got 10 characters, not shown\)/);
    expect(() => loadConfig(HostAgentEnv, { ...stateKey, KILN_CAPACITY_DISK_MIB: '-1' })).toThrow(/KILN_CAPACITY_DISK_MIB/);
    // The heartbeat interval is no longer the agent's to set: it comes from the monitor's registration reply.
    expect(env).not.toHaveProperty('HEARTBEAT_INTERVAL_SECONDS');
  });

  it('takes a list of at most three resolver IPs for sandboxes', () => {
    const stateKey = { KILN_HOST_STATE_KEY: 'a-host-state-key-of-thirty-two-chars' };
    expect(loadConfig(HostAgentEnv, stateKey).KILN_GUEST_NAMESERVERS).toBe('8.8.8.8,1.1.1.1');
    expect(ipListEntries(loadConfig(HostAgentEnv, { ...stateKey, KILN_GUEST_NAMESERVERS: ' 10.0.0.53 , 2001:db8::53' }).KILN_GUEST_NAMESERVERS)).toEqual(['10.0.0.53', '2001:db8::53']);
    expect(() => loadConfig(HostAgentEnv, { ...stateKey, KILN_GUEST_NAMESERVERS: 'dns.example.com' })).toThrow(/KILN_GUEST_NAMESERVERS/);
    expect(() => loadConfig(HostAgentEnv, { ...stateKey, KILN_GUEST_NAMESERVERS: '1.1.1.1,1.0.0.1,8.8.8.8,8.8.4.4' })).toThrow(/at most 3/);
  });

  it('validates the VMM settings on their own for tools that run VMs without the agent', () => {
    expect(loadConfig(HostVmmEnv, {})).toMatchObject({ KILN_QEMU_BINARY: 'qemu-system-x86_64', KILN_VMM_TCG_TB_MIB: 128, KILN_VMM_ACCEL: 'auto' });
    expect(() => loadConfig(HostVmmEnv, { KILN_VMM_TCG_TB_MIB: '4' })).toThrow(/KILN_VMM_TCG_TB_MIB/);
  });

  it('picks the VMM (qemu unless KILN_VMM=firecracker) and takes absolute paths for Firecracker, its jailer, kernel and the UFFD worker', () => {
    expect(loadConfig(HostVmmEnv, {})).toMatchObject({
      KILN_VMM: 'qemu',
      KILN_FIRECRACKER_BINARY: '/usr/local/bin/firecracker',
      KILN_JAILER_BINARY: '/usr/local/bin/jailer',
      KILN_JAILER_CHROOT_BASE: '/srv/jailer',
      KILN_FIRECRACKER_KERNEL: undefined,
      KILN_UFFD_WORKER_BINARY: undefined,
    });
    expect(loadConfig(HostVmmEnv, { KILN_VMM: 'firecracker', KILN_FIRECRACKER_KERNEL: '/k/vmlinux', KILN_UFFD_WORKER_BINARY: '/w/kiln-uffd-worker' })).toMatchObject({
      KILN_VMM: 'firecracker',
      KILN_FIRECRACKER_KERNEL: '/k/vmlinux',
      KILN_UFFD_WORKER_BINARY: '/w/kiln-uffd-worker',
    });
    expect(() => loadConfig(HostVmmEnv, { KILN_VMM: 'cloud-hypervisor' })).toThrow(/KILN_VMM must be one of the following values: qemu, firecracker/);
    for (const variable of ['KILN_FIRECRACKER_BINARY', 'KILN_JAILER_BINARY', 'KILN_FIRECRACKER_KERNEL', 'KILN_JAILER_CHROOT_BASE', 'KILN_UFFD_WORKER_BINARY']) {
      expect(() => loadConfig(HostVmmEnv, { [variable]: 'relative/path' })).toThrow(`${variable} must be an absolute path`);
    }
  });

  it('gives VMMs a uid range that covers every VM the agent may run', () => {
    const stateKey = { KILN_HOST_STATE_KEY: 'a-host-state-key-of-thirty-two-chars' };
    expect(loadConfig(HostAgentEnv, stateKey)).toMatchObject({ KILN_VMM_UID_BASE: 200_000, KILN_VMM_UID_COUNT: 65_536 });
    // 8 sandboxes + 2 × 4 pooled clones + 2 template boots.
    const sized = { ...stateKey, KILN_MAX_SANDBOXES: '8', KILN_CLONE_POOL_SIZE: '2', KILN_CLONE_POOL_TEMPLATES: '4' };
    expect(loadConfig(HostAgentEnv, { ...sized, KILN_VMM_UID_COUNT: '18' }).KILN_VMM_UID_COUNT).toBe(18);
    expect(() => loadConfig(HostAgentEnv, { ...sized, KILN_VMM_UID_COUNT: '17' })).toThrow(/KILN_VMM_UID_COUNT must cover/);
    // Base 0: QEMU stays root, no range needed.
    expect(loadConfig(HostAgentEnv, { ...sized, KILN_VMM_UID_BASE: '0', KILN_VMM_UID_COUNT: '1' }).KILN_VMM_UID_BASE).toBe(0);
    // A tool without sandboxes only needs the range to be valid.
    expect(loadConfig(HostVmmEnv, { KILN_VMM_UID_COUNT: '1' }).KILN_VMM_UID_COUNT).toBe(1);
    expect(() => loadConfig(HostVmmEnv, { KILN_VMM_UID_BASE: '4294967000' })).toThrow(/KILN_VMM_UID_BASE/);
  });

  it("gives pauses and resumes the create's budget unless set, and refuses one the gateway would not wait for", () => {
    const base = { DATABASE_URL: 'postgresql://db:5432/kiln', KILN_SANDBOX_TOKEN_KEY: 'k'.repeat(40) };
    const defaults = loadConfig(SchedulerEnv, base);
    expect([pauseDeadlineMs(defaults), resumeDeadlineMs(defaults)]).toEqual([defaults.SANDBOX_HOST_CREATE_DEADLINE_MS, defaults.SANDBOX_HOST_CREATE_DEADLINE_MS]);
    const set = loadConfig(SchedulerEnv, { ...base, SANDBOX_PAUSE_DEADLINE_MS: '5000', SANDBOX_RESUME_DEADLINE_MS: '7000' });
    expect([pauseDeadlineMs(set), resumeDeadlineMs(set)]).toEqual([5000, 7000]);
    expect(() => loadConfig(SchedulerEnv, { ...base, SANDBOX_RESUME_DEADLINE_MS: String(defaults.SANDBOX_CREATE_TIMEOUT_MS) })).toThrow(
      /SANDBOX_RESUME_DEADLINE_MS must be shorter than SANDBOX_CREATE_TIMEOUT_MS/,
    );
  });

  it('rejects URLs of the wrong scheme', () => {
    expect(() => loadConfig(GatewayEnv, { DATABASE_URL: 'mysql://db/kiln' })).toThrow(/DATABASE_URL must be a postgres\/postgresql URL/);
  });
});

describe('start-up helpers', () => {
  it('digs the server reason out of driver errors', () => {
    expect(describeError(new Error('\nInvalid `prisma.$queryRaw()` invocation:\nMessage: `database "x" does not exist`'))).toBe('database "x" does not exist');
    expect(describeError(new Error('\n\n  connection refused\nmore'))).toBe('connection refused');
  });

  it('retries with backoff and names the dependency when it gives up', async () => {
    let calls = 0;
    await expect(
      retryWithBackoff('Thing at x:1', async () => {
        calls++;
        throw new Error('nope');
      }, { attempts: 3, initialDelayMs: 1 }),
    ).rejects.toThrow('Thing at x:1 unavailable after 3 attempts: nope');
    expect(calls).toBe(3);
    let tries = 0;
    await expect(retryWithBackoff('Flaky', async () => (++tries < 2 ? Promise.reject(new Error('once')) : 'ok'), { initialDelayMs: 1 })).resolves.toBe('ok');
  });
});
