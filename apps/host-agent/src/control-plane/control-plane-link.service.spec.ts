import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, statfs, truncate, writeFile } from 'node:fs/promises';
import { arch, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { HostAgentEnv, loadConfig } from '@kiln/config';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { HostHeartbeat, HostRegistration, HostRegistrationReply, MessagingClient, hostHeartbeatSubject, hostRegisterSubject } from '@kiln/messaging';
import { MetricsRegistry } from '@kiln/telemetry';
import { SandboxManager } from '../sandbox/sandbox-manager.service';
import { TemplateStore } from '../template';
import { AccelerationProbe, VmmConfig } from '../vmm';
import { RegistrationRefusedError } from './control-plane.errors';
import { ControlPlaneLink } from './control-plane-link.service';
import { HOST_AGENT_VERSION, HostInfoService } from './host-info.service';

const HOST_ID = 'link-test-host';
const MIB = 1024 * 1024;

/**
 * The NATS seam: stands in for MessagingClient with a host monitor behind it. It answers registrations as the monitor
 * does (a join token it minted → a new credential; a credential it issued → accepted; anything else → the
 * KilnError(Unauthenticated) that MessagingClient.request turns a handler's Unauthenticated into) and records
 * heartbeats. Everything on the agent's side (the link, host info, sandbox manager, data dir) is the real thing.
 */
class FakeMonitorMessaging {
  readonly registrations: HostRegistration[] = [];
  readonly heartbeats: HostHeartbeat[] = [];
  readonly validTokens = new Set<string>();
  readonly issuedCredentials: string[] = [];
  heartbeatIntervalSeconds = 2;

  async request(subject: string, payload: HostRegistration): Promise<HostRegistrationReply> {
    expect(subject).toBe(hostRegisterSubject(HOST_ID));
    this.registrations.push(payload);
    if (payload.credential !== undefined) {
      if (!this.issuedCredentials.includes(payload.credential)) throw new KilnError(ErrorCode.Unauthenticated, 'unknown host credential');
      return { accepted: true, heartbeatIntervalSeconds: this.heartbeatIntervalSeconds };
    }
    if (payload.token === undefined || !this.validTokens.delete(payload.token)) throw new KilnError(ErrorCode.Unauthenticated, 'join token already used');
    const hostCredential = `credential-${this.issuedCredentials.length + 1}-of-${HOST_ID}`;
    this.issuedCredentials.push(hostCredential);
    return { accepted: true, heartbeatIntervalSeconds: this.heartbeatIntervalSeconds, hostCredential };
  }

  async emit(subject: string, payload: HostHeartbeat): Promise<void> {
    expect(subject).toBe(hostHeartbeatSubject(HOST_ID));
    this.heartbeats.push(payload);
  }
}

const until = async (condition: () => boolean, timeoutMs = 3_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('ControlPlaneLink (a fake MessagingClient as the host monitor; real data dir, host info and sandbox manager)', () => {
  let dataDir: string;
  let monitor: FakeMonitorMessaging;
  const links: ControlPlaneLink[] = [];
  let lastManager: SandboxManager;

  /** An agent's link as the control-plane module wires it, over `dataDir`, with `settings` in its env. */
  function startLink(settings: Record<string, string> = {}): ControlPlaneLink {
    const env = loadConfig(HostAgentEnv, {
      KILN_HOST_STATE_KEY: 'link-test-host-state-key-0123456789',
      KILN_DATA_DIR: dataDir,
      KILN_HOST_ID: HOST_ID,
      KILN_VMM_ACCEL: 'tcg',
      ...settings,
    });
    const templates = new TemplateStore({ dataDir });
    const sandboxes = new SandboxManager(
      env,
      {} as never,
      {} as never,
      {} as never,
      {} as never,
      { keepWarm: () => undefined } as never,
      templates,
      { publish: async () => undefined } as never,
      new MetricsRegistry(),
    );
    lastManager = sandboxes;
    const acceleration = new AccelerationProbe(new VmmConfig(dataDir, env.KILN_QEMU_BINARY, 'tcg', env.KILN_VMM_TCG_TB_MIB, 1_000), templates);
    // The slot pool and clone pool only matter for templates and gRPC host info; this data dir has no templates.
    const hostInfo = new HostInfoService(env, sandboxes, {} as never, templates, acceleration, { describe: () => [] } as never);
    const link = new ControlPlaneLink(env, monitor as unknown as MessagingClient, sandboxes, hostInfo);
    links.push(link);
    return link;
  }

  beforeEach(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'kiln-link-'));
    monitor = new FakeMonitorMessaging();
  });

  afterEach(async () => {
    for (const link of links.splice(0)) link.onApplicationShutdown();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('exchanges the join token for a credential, stores it 0600 in the data dir, and presents only the credential from then on (also after a restart without the token)', async () => {
    monitor.validTokens.add('kjt1.first-join-token.mac');
    const link = startLink({ KILN_JOIN_TOKEN: 'kjt1.first-join-token.mac' });
    link.onApplicationBootstrap();
    await until(() => link.isRegistered);

    expect(monitor.registrations[0]).toMatchObject({ hostId: HOST_ID, token: 'kjt1.first-join-token.mac' });
    expect(monitor.registrations[0]).not.toHaveProperty('credential');
    const credentialFile = join(dataDir, 'host-credential');
    expect((await readFile(credentialFile, 'utf8')).trim()).toBe(monitor.issuedCredentials[0]);
    expect((await stat(credentialFile)).mode & 0o777).toBe(0o600);

    await link.register();
    expect(monitor.registrations[1]).toMatchObject({ credential: monitor.issuedCredentials[0] });
    expect(monitor.registrations[1]).not.toHaveProperty('token');

    // A restarted agent no longer needs (nor has) the spent token: the stored credential registers it.
    link.onApplicationShutdown();
    const restarted = startLink();
    await restarted.register();
    expect(monitor.registrations[2]).toMatchObject({ credential: monitor.issuedCredentials[0] });
    expect(monitor.issuedCredentials).toHaveLength(1);
  });

  it('falls back to the join token when the monitor answers Unauthenticated to the stored credential, and stores the new credential', async () => {
    await writeFile(join(dataDir, 'host-credential'), 'a-credential-the-monitor-forgot\n', { mode: 0o600 });
    monitor.validTokens.add('kjt1.replacement-token.mac');
    const link = startLink({ KILN_JOIN_TOKEN: 'kjt1.replacement-token.mac' });

    await link.register();
    expect(monitor.registrations.map((r) => r.credential ?? r.token)).toEqual(['a-credential-the-monitor-forgot', 'kjt1.replacement-token.mac']);
    expect((await readFile(join(dataDir, 'host-credential'), 'utf8')).trim()).toBe(monitor.issuedCredentials[0]);
    await link.register();
    expect(monitor.registrations[2]).toMatchObject({ credential: monitor.issuedCredentials[0] });
  });

  it('names the remedy and keeps running when it has neither a credential nor a join token, or its credential is refused without one', async () => {
    const link = startLink();
    await expect(link.register()).rejects.toThrow(RegistrationRefusedError);
    await expect(link.register()).rejects.toThrow(/no credential \(.*host-credential\) and KILN_JOIN_TOKEN is not set: mint a join token for host link-test-host/);
    expect(monitor.registrations).toHaveLength(0);

    await writeFile(join(dataDir, 'host-credential'), 'a-credential-the-monitor-forgot\n', { mode: 0o600 });
    const withCredential = startLink();
    await expect(withCredential.register()).rejects.toThrow(/refused the credential in .*host-credential \(unknown host credential\) and KILN_JOIN_TOKEN is not set/);
    // The registration loop keeps the agent up and retrying rather than crashing it.
    withCredential.onApplicationBootstrap();
    await sleep(50);
    expect(withCredential.isRegistered).toBe(false);
  });

  it("heartbeats at the interval the monitor's reply names and re-arms when a re-registration changes it", async () => {
    monitor.validTokens.add('kjt1.interval-token.mac');
    monitor.heartbeatIntervalSeconds = 0.05;
    const link = startLink({ KILN_JOIN_TOKEN: 'kjt1.interval-token.mac' });
    link.onApplicationBootstrap();
    await until(() => monitor.heartbeats.length >= 5, 2_000);
    expect(link.heartbeatIntervalSeconds).toBe(0.05);

    monitor.heartbeatIntervalSeconds = 30;
    await link.register();
    expect(link.heartbeatIntervalSeconds).toBe(30);
    await sleep(20); // a heartbeat already in flight may still land
    const sent = monitor.heartbeats.length;
    await sleep(300);
    expect(monitor.heartbeats.length).toBe(sent);
  });

  it('reports disk capacity (the data dir filesystem, or KILN_CAPACITY_DISK_MIB) and usage, creates in progress, acceleration, version and the machine', async () => {
    monitor.validTokens.add('kjt1.report-token.mac');
    const link = startLink({ KILN_JOIN_TOKEN: 'kjt1.report-token.mac' });
    link.onApplicationBootstrap();
    await until(() => monitor.heartbeats.length >= 1);

    const fs = await statfs(dataDir);
    const heartbeat = monitor.heartbeats[0];
    expect(heartbeat).toMatchObject({
      hostId: HOST_ID,
      capacity: { diskMib: Math.floor((fs.blocks * fs.bsize) / MIB), sandboxes: 32 },
      usage: { vcpus: 0, memoryMib: 0, sandboxes: 0, diskMib: 0, starting: 0 },
      sandboxIds: [],
      acceleration: 'tcg',
      agentVersion: HOST_AGENT_VERSION,
    });
    expect(heartbeat.capacity.diskMib).toBeGreaterThan(0);
    // Used space moves with everything else on this filesystem: within 64 MiB of statfs taken just now.
    expect(Math.abs(heartbeat.usage.diskUsedMib! - ((fs.blocks - fs.bfree) * fs.bsize) / MIB)).toBeLessThan(64);
    expect(Date.parse(heartbeat.at)).toBeGreaterThan(Date.now() - 5_000);

    const registration = monitor.registrations[0];
    expect(registration).toMatchObject({
      acceleration: 'tcg',
      version: HOST_AGENT_VERSION,
      capacity: { diskMib: heartbeat.capacity.diskMib },
      machine: { cpuArchitecture: arch(), cpuCount: cpus().length, cpuModelName: cpus()[0].model.trim() },
    });
    expect(registration.machine!.memoryTotalMib).toBeGreaterThan(0);

    link.onApplicationShutdown();
    monitor.heartbeats.length = 0;
    const sized = startLink({ KILN_CAPACITY_DISK_MIB: '20480' });
    sized.onApplicationBootstrap();
    await until(() => monitor.heartbeats.length >= 1);
    expect(monitor.heartbeats[0].capacity.diskMib).toBe(20480);
  });

  it("counts each live sandbox's disk (its template build's rootfs: a raw file's size, a qcow2 image's virtual size) and the creates in progress", async () => {
    /** A template build on disk as the template store reads it, with a sparse rootfs of `diskMib`. */
    async function templateBuild(templateId: string, format: 'raw' | 'qcow2', diskMib: number): Promise<void> {
      const dir = join(dataDir, 'templates', templateId, 'b1');
      await mkdir(dir, { recursive: true });
      for (const file of ['vmlinux', 'initrd']) await writeFile(join(dir, file), '');
      if (format === 'raw') {
        await writeFile(join(dir, 'rootfs.img'), '');
        await truncate(join(dir, 'rootfs.img'), diskMib * MIB);
      } else {
        execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', join(dir, 'rootfs.img'), `${diskMib}M`]);
      }
      const manifest = { templateId, buildId: 'b1', vcpus: 1, memoryMib: 256, kernel: 'vmlinux', initrd: 'initrd', rootfs: 'rootfs.img', rootfsFormat: format, kernelArgs: '', kernelRelease: 'test', agentPort: 49983 };
      await writeFile(join(dir, 'template.json'), JSON.stringify(manifest));
    }
    await templateBuild('raw-template', 'raw', 1024);
    await templateBuild('qcow2-template', 'qcow2', 3072);
    monitor.validTokens.add('kjt1.disk-token.mac');
    const link = startLink({ KILN_JOIN_TOKEN: 'kjt1.disk-token.mac' });
    // Real creates need VMs: the sandboxes are put where the manager's creates and adoptions put them, its map.
    const live = (lastManager as unknown as { sandboxes: Map<string, unknown> }).sandboxes;
    const sandbox = (sandboxId: string, templateId: string, state: string) =>
      live.set(sandboxId, { record: { sandboxId, templateId, buildId: 'b1', vcpus: 2, memoryMib: 512 }, state, stopping: false });
    sandbox('sbx-running', 'raw-template', 'running');
    sandbox('sbx-paused', 'qcow2-template', 'paused');
    sandbox('sbx-starting', 'raw-template', 'starting');

    link.onApplicationBootstrap();
    await until(() => monitor.heartbeats.length >= 1);
    expect(monitor.heartbeats[0].usage).toMatchObject({ diskMib: 1024 + 3072 + 1024, starting: 1, sandboxes: 2, vcpus: 4, memoryMib: 1024 });
    expect(monitor.heartbeats[0].sandboxIds.sort()).toEqual(['sbx-paused', 'sbx-running', 'sbx-starting']);
  });
});
