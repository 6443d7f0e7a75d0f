import 'reflect-metadata';
import { SandboxState } from '@kiln/contracts';
import { SeededTeam, TestStack } from './support/test-stack';

jest.setTimeout(60_000);

let stack: TestStack;

beforeAll(async () => {
  stack = await TestStack.start();
}, 60_000);

afterAll(async () => {
  await stack?.stop();
}, 60_000);

async function createSandbox(team: SeededTeam): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${stack.gateway.apiUrl}/sandboxes`, {
    method: 'POST',
    headers: { 'x-api-key': team.apiKey, 'content-type': 'application/json' },
    body: JSON.stringify({ templateID: 'base', timeout: 300 }),
  });
  return { status: response.status, body: await response.json() };
}

describe('team quotas through the gateway (real scheduler and Postgres)', () => {
  it("answers a create over the team's quota with 429 in E2B's error shape, naming the limit", async () => {
    const team = await stack.seedTeam();
    // One running sandbox (1 vCPU, 256 MiB) and a quota of one sandbox.
    await stack.seedSandbox({ teamId: team.teamId, proxyUrl: 'http://127.0.0.1:1', state: SandboxState.Running });
    await stack.teams.setQuota(team.teamId, { maxConcurrentSandboxes: 1 });

    const refused = await createSandbox(team);
    expect(refused).toEqual({
      status: 429,
      body: { code: 429, message: expect.stringMatching(/^team quota exceeded for concurrent sandboxes: 1 in use \+ 1 requested/), error_code: 'quota_exceeded' },
    });

    // Control: a vCPU quota names vCPUs.
    await stack.teams.setQuota(team.teamId, { maxConcurrentSandboxes: null, maxVcpus: 1 });
    expect((await createSandbox(team)).body).toMatchObject({ code: 429, message: expect.stringContaining('vCPUs: 1 in use + 1 requested') });
  });
});
