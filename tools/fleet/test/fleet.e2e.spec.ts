import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Client as PgClient } from 'pg';
import { Sandbox } from 'e2b';
import { hostAgentClient } from '../../e2e/harness/host-agent-client';
import { internalTlsFiles } from '../../e2e/harness/internal-tls';
import { ROOT, StackInfo, StackOptions, healAgent, killAgent, partitionAgent, startAgent, startStack, stopStack } from '../../e2e/harness/stack-harness';

const execFileAsync = promisify(execFile);

const ADMIN_TOKEN = `fleet-admin-${Date.now()}-0123456789abcdef0123456789`;

/**
 * Three host agents, each in a network namespace of its own, two scheduler replicas and the host monitor with its
 * default thresholds (heartbeat every 2 s, unhealthy after 6 s, dead after 12 s). Its own data dir, prefix and CIDRs.
 */
const FLEET_STACK: StackOptions = {
  name: 'fleet',
  dataDir: '/var/lib/kiln-fleet',
  networkPrefix: 'kfe',
  slotCidr: '10.234.0.0/16',
  stackFile: join(ROOT, '.kiln', 'fleet', 'stack.json'),
  agents: 3,
  schedulers: 2,
  commonEnv: { KILN_ADMIN_TOKEN: ADMIN_TOKEN, RECONCILE_INTERVAL_SECONDS: '5' },
  // One clone kept per template (three agents share two cores) and room for the 50-create test on three hosts.
  hostAgentEnv: { KILN_CLONE_POOL_SIZE: '1', KILN_MAX_SANDBOXES: '24', KILN_CAPACITY_MEMORY_MIB: '16384', KILN_CAPACITY_VCPUS: '32' },
};

/** Retries an assertion until it holds or the time is up (then its last failure is thrown). */
async function until(assertion: () => Promise<void>, options: { timeoutMs: number; intervalMs: number }): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    try {
      await assertion();
      return;
    } catch (error) {
      if (Date.now() >= deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, options.intervalMs));
    }
  }
}

/** The acceptance bound: a dead host's sandboxes are `error/host_lost` within 15 s of its death. */
const DETECTION_BOUND_MS = 15_000;

interface NodeView {
  id: string;
  status: string;
  kilnState: string;
  sandboxCount: number;
}

describe('fleet: three host agents, two schedulers, one host monitor', () => {
  let stack: StackInfo;
  let pg: PgClient;
  const hostIds: string[] = [];

  const admin = (path: string, init: RequestInit = {}) =>
    fetch(`${stack.apiUrl}${path}`, { ...init, headers: { 'X-Admin-Token': ADMIN_TOKEN, 'content-type': 'application/json', ...(init.headers ?? {}) } });

  const nodes = async (): Promise<NodeView[]> => {
    const response = await admin('/nodes');
    expect(response.status).toBe(200);
    return (await response.json()) as NodeView[];
  };

  const node = async (hostId: string): Promise<NodeView> => {
    const response = await admin(`/nodes/${hostId}`);
    expect(response.status).toBe(200);
    return (await response.json()) as NodeView;
  };

  const setStatus = async (hostId: string, status: string) => {
    const response = await admin(`/nodes/${hostId}`, { method: 'POST', body: JSON.stringify({ status }) });
    expect(response.status).toBe(204);
  };

  /** Creates through the public API; returns the sandbox id. */
  const create = async (templateID = 'base'): Promise<string> => {
    const response = await fetch(`${stack.apiUrl}/sandboxes`, {
      method: 'POST',
      headers: { 'X-API-Key': stack.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ templateID, timeout: 600, secure: true }),
    });
    const text = await response.text();
    if (response.status !== 201) throw new Error(`create answered ${response.status}: ${text}`);
    return (JSON.parse(text) as { sandboxID: string }).sandboxID;
  };

  const createMany = async (count: number, concurrency: number, templateID = 'base'): Promise<string[]> => {
    const ids: string[] = [];
    for (let i = 0; i < count; i += concurrency) {
      ids.push(...(await Promise.all(Array.from({ length: Math.min(concurrency, count - i) }, () => create(templateID)))));
    }
    return ids;
  };

  const kill = async (sandboxId: string) => {
    const response = await fetch(`${stack.apiUrl}/sandboxes/${sandboxId}`, { method: 'DELETE', headers: { 'X-API-Key': stack.apiKey } });
    await response.arrayBuffer();
  };

  const killAllLive = async () => {
    const { rows } = await pg.query<{ id: string }>(`SELECT id FROM sandboxes WHERE state IN ('pending','starting','running','paused')`);
    await Promise.all(rows.map((row) => kill(row.id)));
  };

  const hostOf = async (sandboxId: string): Promise<string> => {
    const { rows } = await pg.query<{ host_id: string }>('SELECT host_id FROM sandboxes WHERE id = $1', [sandboxId]);
    return rows[0].host_id;
  };

  const hostsOf = async (ids: string[]): Promise<Map<string, number>> => {
    const counts = new Map<string, number>();
    for (const id of ids) {
      const host = await hostOf(id);
      counts.set(host, (counts.get(host) ?? 0) + 1);
    }
    return counts;
  };

  const liveOnHost = async (hostId: string): Promise<string[]> => {
    const { rows } = await pg.query<{ id: string }>(
      `SELECT id FROM sandboxes WHERE host_id = $1 AND state IN ('pending','starting','running','pausing','paused','resuming') ORDER BY id`,
      [hostId],
    );
    return rows.map((row) => row.id);
  };

  /** The VMs a host agent itself reports (gRPC ListSandboxes, as the scheduler calls it). */
  const vmsOn = async (index: number): Promise<string[]> => {
    const agent = hostAgentClient(stack.agents![index].grpcAddress, internalTlsFiles(stack.internalTlsDir, 'scheduler'));
    try {
      const listed = await agent.listSandboxes();
      return (listed.sandboxes ?? []).map((s: { sandboxId: string }) => s.sandboxId).sort();
    } finally {
      agent.close();
    }
  };

  const indexOf = (hostId: string) => stack.agents!.findIndex((agent) => agent.hostId === hostId);

  /** Runs a command in a sandbox through the gateway's sandbox traffic route, as an SDK user does. */
  const runIn = async (sandboxId: string, command: string): Promise<string> => {
    const sandbox = await Sandbox.connect(sandboxId, { apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain });
    return (await sandbox.commands.run(command, { timeoutMs: 60_000 })).stdout.trim();
  };

  /** Waits until the host's running sandboxes are all `error/host_lost` and the host is unhealthy or dead. */
  const expectHostLost = async (hostId: string, sandboxIds: string[], since: number) => {
    await until(
      async () => {
        const { rows } = await pg.query<{ id: string; state: string; state_reason: string | null }>(
          'SELECT id, state, state_reason FROM sandboxes WHERE id = ANY($1)',
          [sandboxIds],
        );
        expect(rows).toHaveLength(sandboxIds.length);
        for (const row of rows) expect({ id: row.id, state: row.state, reason: row.state_reason }).toEqual({ id: row.id, state: 'error', reason: 'host_lost' });
        expect(['unhealthy', 'dead']).toContain((await node(hostId)).kilnState);
      },
      { timeoutMs: DETECTION_BOUND_MS + 5_000, intervalMs: 250 },
    );
    const detectedAfterMs = Date.now() - since;
    expect(detectedAfterMs).toBeLessThanOrEqual(DETECTION_BOUND_MS);
    // Their events say so: the transition to error is recorded with the reason.
    const { rows: events } = await pg.query<{ sandbox_id: string }>(
      `SELECT DISTINCT sandbox_id FROM sandbox_events WHERE sandbox_id = ANY($1) AND to_state = 'error' AND reason = 'host_lost'`,
      [sandboxIds],
    );
    expect(events.map((e) => e.sandbox_id).sort()).toEqual([...sandboxIds].sort());
    return detectedAfterMs;
  };

  /** After recovery, the host agent runs exactly the VMs the database counts as live there (nothing stale). */
  const expectAgreement = async (index: number) => {
    const hostId = stack.agents![index].hostId;
    await until(
      async () => {
        expect((await node(hostId)).kilnState).toBe('ready');
        expect(await vmsOn(index)).toEqual(await liveOnHost(hostId));
      },
      { timeoutMs: 90_000, intervalMs: 1_000 },
    );
  };

  const expectNoDuplicatesListed = async () => {
    const response = await fetch(`${stack.apiUrl}/v2/sandboxes?limit=100`, { headers: { 'X-API-Key': stack.apiKey } });
    expect(response.status).toBe(200);
    const listed = ((await response.json()) as Array<{ sandboxID: string }>).map((s) => s.sandboxID);
    expect(new Set(listed).size).toBe(listed.length);
    return listed;
  };

  beforeAll(async () => {
    stack = await startStack(FLEET_STACK);
    hostIds.push(...stack.agents!.map((agent) => agent.hostId));
    pg = new PgClient({ connectionString: stack.databaseUrl });
    await pg.connect();
  }, 900_000);

  afterAll(async () => {
    await pg?.end().catch(() => undefined);
    if (stack) await stopStack(stack);
  }, 300_000);

  it('registers three hosts with the monitor; the admin API needs the admin token', async () => {
    await until(
      async () => {
        const listed = await nodes();
        expect(listed.map((n) => n.id).sort()).toEqual([...hostIds].sort());
        for (const n of listed) expect({ id: n.id, status: n.status }).toEqual({ id: n.id, status: 'ready' });
      },
      { timeoutMs: 60_000, intervalMs: 500 },
    );
    // The probe works where it should (above) and is refused without the token or with a wrong one.
    expect((await fetch(`${stack.apiUrl}/nodes`)).status).toBe(401);
    expect((await fetch(`${stack.apiUrl}/nodes`, { headers: { 'X-Admin-Token': `${ADMIN_TOKEN}x` } })).status).toBe(401);
    expect((await fetch(`${stack.apiUrl}/nodes`, { headers: { 'X-API-Key': stack.apiKey } })).status).toBe(401);
  });

  it('spreads twelve creates over all three hosts', async () => {
    const ids = await createMany(12, 3);
    const counts = await hostsOf(ids);
    console.log(`fleet: twelve creates per host: ${[...counts].map(([host, n]) => `${host} ${n}`).join(', ')}`);
    // Every host takes some; a host with a restored clone waiting is preferred over an emptier one (locality first).
    expect([...counts.keys()].sort()).toEqual([...hostIds].sort());
    await Promise.all(ids.map(kill));
  });

  it('draws a template cached on one host to that host while it has room', async () => {
    // A template build runs on one host; the template then exists only there (the others would fetch it on first use).
    // (/etc, not /tmp: a sandbox's /tmp is a fresh tmpfs.)
    const context = mkdtempSync(join(tmpdir(), 'kiln-fleet-'));
    try {
      const module = join(context, 'definition.mjs');
      writeFileSync(module, `export default ({ Template }) => Template().fromTemplate('base').runCmd('echo local > /etc/kiln-locality', { user: 'root' });\n`);
      const options = { apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain, cpuCount: 1, memoryMB: 512 };
      const { stdout } = await execFileAsync('node', [join(ROOT, 'tools/e2e/harness/sdk-template-build.mjs'), module, 'fleet-local', JSON.stringify(options)], {
        cwd: ROOT,
        maxBuffer: 64 * 1024 * 1024,
        timeout: 600_000,
      });
      const last = JSON.parse(stdout.trim().split('\n').pop()!) as { result?: { templateId: string }; error?: { message: string } };
      expect(last.error).toBeUndefined();
      const templateId = last.result!.templateId;
      const { rows } = await pg.query<{ host_id: string }>(
        `SELECT built_on_host_id AS host_id FROM template_builds WHERE template_id = $1 AND state = 'ready' ORDER BY created_at DESC LIMIT 1`,
        [templateId],
      );
      const buildHost = rows[0]?.host_id;
      expect(hostIds).toContain(buildHost);
      // Only the build host reports the template cached (the fleet view the schedulers place from).
      await until(async () => expect((await nodes()).filter((n) => (n as unknown as { templates: string[] }).templates.includes(templateId)).map((n) => n.id)).toEqual([buildHost]), {
        timeoutMs: 30_000,
        intervalMs: 500,
      });
      const ids = await createMany(3, 1, templateId);
      expect(await hostsOf(ids)).toEqual(new Map([[buildHost, 3]]));
      expect(await runIn(ids[0], 'cat /etc/kiln-locality')).toBe('local');
      await Promise.all(ids.map(kill));
    } finally {
      rmSync(context, { recursive: true, force: true });
    }
  });

  it('gives a draining host nothing new while its running sandboxes keep working', async () => {
    const before = await createMany(3, 3);
    const counts = await hostsOf(before);
    const drained = [...counts.keys()][0];
    const onDrained = [];
    for (const id of before) if ((await hostOf(id)) === drained) onDrained.push(id);
    await setStatus(drained, 'draining');
    expect((await node(drained)).status).toBe('draining');
    const during = await createMany(6, 3);
    for (const id of during) expect(await hostOf(id)).not.toBe(drained);
    expect(await runIn(onDrained[0], 'echo still-here')).toBe('still-here');
    // Cordoning reads as E2B's standby; uncordoning makes the host take sandboxes again.
    await setStatus(drained, 'standby');
    expect((await node(drained)).kilnState).toBe('cordoned');
    await setStatus(drained, 'ready');
    expect((await node(drained)).status).toBe('ready');
    // A bad status is a 400 naming it, an unknown node a 404.
    const bad = await admin(`/nodes/${drained}`, { method: 'POST', body: JSON.stringify({ status: 'sideways' }) });
    expect(bad.status).toBe(400);
    expect(await bad.text()).toContain('status');
    expect((await admin('/nodes/no-such-host')).status).toBe(404);
    await Promise.all([...before, ...during].map(kill));
  });

  it('detects a SIGKILLed agent within 15 s, ends its sandboxes host_lost, places elsewhere, and reconciles it on restart', async () => {
    const ids = await createMany(6, 3);
    const victimHost = (await hostOf(ids[0]))!;
    const victim = indexOf(victimHost);
    const lost = (await liveOnHost(victimHost)).filter((id) => ids.includes(id));
    expect(lost.length).toBeGreaterThan(0);
    const killedAt = Date.now();
    await killAgent(stack, victim);
    const detectedAfterMs = await expectHostLost(victimHost, lost, killedAt);
    console.log(`fleet: agent ${victimHost} SIGKILLed; its ${lost.length} sandboxes were host_lost after ${detectedAfterMs} ms`);
    // Creates after detection all succeed, none on the dead host.
    const after = await createMany(4, 2);
    for (const id of after) expect(await hostOf(id)).not.toBe(victimHost);
    // Its VMs outlived it; restarted, the agent registers again and the stale VMs are destroyed.
    stack = await startAgent(stack, victim);
    await expectAgreement(victim);
    for (const id of lost) expect(await vmsOn(victim)).not.toContain(id);
    const listed = await expectNoDuplicatesListed();
    for (const id of lost) expect(listed).not.toContain(id);
    await Promise.all([...ids, ...after].map(kill));
  });

  it('detects a partitioned agent the same way and agrees with it after the link heals', async () => {
    const ids = await createMany(6, 3);
    const cutHost = await hostOf(ids[ids.length - 1]);
    const cut = indexOf(cutHost);
    const lost = (await liveOnHost(cutHost)).filter((id) => ids.includes(id));
    expect(lost.length).toBeGreaterThan(0);
    const cutAt = Date.now();
    await partitionAgent(stack, cut);
    try {
      const detectedAfterMs = await expectHostLost(cutHost, lost, cutAt);
      console.log(`fleet: agent ${cutHost} partitioned; its ${lost.length} sandboxes were host_lost after ${detectedAfterMs} ms`);
      const after = await createMany(2, 2);
      for (const id of after) expect(await hostOf(id)).not.toBe(cutHost);
      ids.push(...after);
    } finally {
      await healAgent(stack, cut);
    }
    // The agent kept running (and kept its VMs) through the partition; once it is heard again, the VMs the
    // database closed are destroyed on it and nothing is listed twice.
    await expectAgreement(cut);
    await expectNoDuplicatesListed();
    await Promise.all(ids.map(kill));
  });

  it('with two scheduler replicas, 50 concurrent creates make 50 sandboxes, each placed once', async () => {
    await killAllLive();
    for (let i = 0; i < stack.agents!.length; i++) await until(async () => expect(await vmsOn(i)).toEqual([]), { timeoutMs: 60_000, intervalMs: 1_000 });
    const results = await Promise.allSettled(Array.from({ length: 50 }, () => create()));
    const failed = results.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason));
    expect(failed).toEqual([]);
    const ids = results.map((r) => (r as PromiseFulfilledResult<string>).value);
    expect(new Set(ids).size).toBe(50);
    const { rows } = await pg.query<{ n: string }>(`SELECT count(*) AS n FROM sandboxes WHERE id = ANY($1) AND state = 'running'`, [ids]);
    expect(Number(rows[0].n)).toBe(50);
    // Each sandbox runs on exactly one host, the one its row names, and no host runs a VM the database lacks.
    const seen = new Map<string, string[]>();
    for (let i = 0; i < stack.agents!.length; i++) for (const id of await vmsOn(i)) seen.set(id, [...(seen.get(id) ?? []), stack.agents![i].hostId]);
    expect([...seen.keys()].sort()).toEqual([...ids].sort());
    for (const id of ids) expect(seen.get(id)).toEqual([await hostOf(id)]);
    // Both replicas placed some of them (the control: this really ran with two schedulers).
    const placements = await Promise.all(
      stack.schedulerHttpUrls!.map(async (url) => {
        const text = await (await fetch(`${url}/metrics`)).text();
        return text
          .split('\n')
          .filter((line) => line.startsWith('kiln_placements_total') && line.includes('result="placed"'))
          .reduce((sum, line) => sum + Number(line.split(' ').pop()), 0);
      }),
    );
    console.log(`fleet: placements per scheduler replica: ${placements.join(', ')}`);
    expect(placements.every((count) => count > 0)).toBe(true);
    await Promise.all(ids.map(kill));
  });
});
