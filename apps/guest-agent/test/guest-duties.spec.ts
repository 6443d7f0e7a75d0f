import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { Code, ConnectError } from '@connectrpc/connect';
import { RunningAgent } from './support/running-agent';

/**
 * The agent with guest duties forced on, as inside the VM. This suite never sends /init a timestamp, so the host
 * clock is never touched; what it checks is the OOM policy (the agent protects itself and its commands do not
 * inherit that) and that the native addon is loaded and reseeds the kernel's CRNG from an /init seed (crediting
 * host-made random bytes to the host's own pool is harmless).
 */
describe('guest duties: OOM policy', () => {
  let agent: RunningAgent;

  beforeAll(async () => {
    agent = await RunningAgent.start({ guestDuties: 'on' });
  });

  afterAll(async () => {
    await agent.stop();
  });

  async function stdoutOf(stream: AsyncIterable<{ event?: { event: { case?: string; value?: unknown } } }>): Promise<string> {
    let out = '';
    for await (const m of stream) {
      const e = m.event?.event as { case?: string; value?: { output?: { case?: string; value?: Uint8Array } } };
      if (e?.case === 'data' && (e.value?.output?.case === 'stdout' || e.value?.output?.case === 'pty')) {
        out += Buffer.from(e.value.output.value!).toString();
      }
    }
    return out;
  }

  /** In the VM the agent is real root; a sandboxed CI host may refuse lowering a score even to root. */
  const agentProtected = () => readFileSync(`/proc/${agent.pid}/oom_score_adj`, 'utf8').trim() === '-1000';

  it('protects itself where the kernel allows it, and says so when it cannot', () => {
    if (!agentProtected()) {
      expect(readFileSync(`/proc/${agent.pid}/oom_score_adj`, 'utf8').trim()).toBe('0');
      expect(agent.stderr).toMatch(/cannot set oom_score_adj/);
    }
    expect(agent.isAlive).toBe(true);
  });

  it('never lets commands inherit the protection; same pid as the command, for pipes and PTYs', async () => {
    const expectedScore = agentProtected() ? '100' : '0';
    const client = agent.processClient();
    let pid = 0;
    const out = await stdoutOf(
      (async function* () {
        for await (const m of client.start({ process: { cmd: '/bin/bash', args: ['-c', 'echo $$; cat /proc/$$/oom_score_adj; id -un'], envs: {} } })) {
          if (m.event?.event.case === 'start') pid = m.event.event.value.pid;
          yield m;
        }
      })(),
    );
    const [shellPid, score, who] = out.trim().split('\n');
    expect(Number(shellPid)).toBe(pid);
    expect(score).toBe(expectedScore);
    expect(who).toBe('user');

    const viaPty = await stdoutOf(
      client.start({ process: { cmd: '/bin/bash', args: ['-c', 'cat /proc/$$/oom_score_adj'], envs: {} }, pty: { size: { cols: 80, rows: 24 } } }),
    );
    expect(viaPty.trim()).toBe(expectedScore);
  });

  it('reseeds the kernel CRNG through the native addon when /init carries an entropy seed', async () => {
    const res = await fetch(`${agent.url}/init`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ entropySeed: randomBytes(32).toString('base64') }),
    });
    expect(res.status).toBe(204);
    expect(agent.stderr).not.toMatch(/reseed/);
  });

  it('still reports a missing command as invalid_argument through the wrapper', async () => {
    const err = await stdoutOf(agent.processClient().start({ process: { cmd: 'no-such-command-here', args: [], envs: {} } })).catch((e: unknown) => e);
    expect(ConnectError.from(err).code).toBe(Code.InvalidArgument);
  });
});
