import { CommandExitError, CommandHandle, Sandbox, TimeoutError } from 'e2b';
import { killSandbox } from '../harness/api-client';
import { StackInfo, readStack } from '../harness/stack-harness';

/** A Prometheus counter's value, summed over the series whose labels include `labels`. */
async function counter(url: string, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith(`${name}{`) && l.includes(labels))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

/** When the command's wait() settled, and with what (its result or its error). */
function watch(handle: CommandHandle): { settled: Promise<{ at: number; outcome: unknown }>; done: () => boolean } {
  let done = false;
  const settled = handle.wait().then(
    (result) => ({ at: Date.now(), outcome: result as unknown }),
    (error) => ({ at: Date.now(), outcome: error }),
  );
  void settled.then(() => (done = true));
  return { settled, done: () => done };
}

/**
 * A killed sandbox's open command streams end at once (SDK → gateway traffic listener → host agent proxy → guest),
 * rather than at the client's own timeout: the VM dies without resetting its connections, so the host agent cuts
 * them. The official SDK, unchanged, then raises the error its own test expects for this case
 * (sandboxKilledDuringRun.test.ts): a TimeoutError saying the sandbox was killed.
 */
describe('a killed sandbox ends its open streams at once (real stack, real VMs)', () => {
  let stack: StackInfo;
  let opts: { apiKey: string; apiUrl: string; sandboxUrl: string; domain: string };
  let hostAgentMetrics: string;
  let gatewayMetrics: string;
  /** Killed by the first test while a command streams from it. */
  let doomed: Sandbox;
  /** Never killed during the tests: its identical streams must stay open. */
  let control: Sandbox;

  beforeAll(async () => {
    stack = readStack();
    opts = { apiKey: stack.apiKey, apiUrl: stack.apiUrl, sandboxUrl: stack.sandboxUrl, domain: stack.domain };
    hostAgentMetrics = stack.hostAgent.httpUrl;
    gatewayMetrics = stack.apiUrl;
    const create = () => Sandbox.create('base', { ...opts, timeoutMs: 180_000, metadata: { suite: 'killed-streams' } });
    [doomed, control] = await Promise.all([create(), create()]);
  });

  afterAll(async () => {
    for (const sandbox of [doomed, control]) await sandbox?.kill().catch(() => undefined);
  });

  it('ends a running command’s stream within 1 s of DELETE /sandboxes/{id}, with the SDK’s “sandbox was killed” error; a live sandbox’s streams stay open', async () => {

    const doomedCommand = await doomed.commands.run('sleep 60', { background: true });
    const controlCommand = await control.commands.run('sleep 60', { background: true });
    const doomedWatch = watch(doomedCommand);
    const controlWatch = watch(controlCommand);
    // Both streams are open and idle (sleep prints nothing) before the kill.
    await new Promise((r) => setTimeout(r, 500));
    expect(doomedWatch.done()).toBe(false);
    expect(controlWatch.done()).toBe(false);
    const cutBefore = await counter(hostAgentMetrics, 'kiln_agent_proxy_ended_by_destroy_total', 'how="cut"');
    const gatewayCutBefore = await counter(gatewayMetrics, 'kiln_gateway_traffic_requests_total', 'outcome="upstream_cut"');

    const deleteSentAt = Date.now();
    expect(await killSandbox(stack, doomed.sandboxId)).toBe(204);
    const deleteAnsweredAt = Date.now();

    const { at: endedAt, outcome } = await doomedWatch.settled;
    console.log(`DELETE took ${deleteAnsweredAt - deleteSentAt} ms; the stream's wait() settled ${endedAt - deleteSentAt} ms after it was sent`);
    expect(endedAt - deleteAnsweredAt).toBeLessThan(1_000);
    expect(outcome).toBeInstanceOf(TimeoutError);
    expect((outcome as Error).message).toContain('sandbox was killed or reached its end of life');

    // The host agent cut the stream because the sandbox was destroyed; the gateway passed the cut on.
    expect(await counter(hostAgentMetrics, 'kiln_agent_proxy_ended_by_destroy_total', 'how="cut"')).toBeGreaterThanOrEqual(cutBefore + 1);
    expect(await counter(gatewayMetrics, 'kiln_gateway_traffic_requests_total', 'outcome="upstream_cut"')).toBeGreaterThanOrEqual(gatewayCutBefore + 1);

    // New requests for the killed sandbox get the ordinary refusal: 502 in E2B's error shape.
    const health = await fetch(`${stack.sandboxUrl}/health`, { headers: { 'E2b-Sandbox-Id': doomed.sandboxId, 'E2b-Sandbox-Port': '49983' } });
    expect(health.status).toBe(502);
    expect(await health.json()).toMatchObject({ code: 502, message: expect.any(String) });

    // Control: the live sandbox's identical stream is still open well after the kill, and ends properly when its
    // process does (a Connect end event: the SDK reports the signal as a CommandExitError, not a transport error).
    await new Promise((r) => setTimeout(r, 2_000));
    expect(controlWatch.done()).toBe(false);
    expect(await control.commands.kill(controlCommand.pid)).toBe(true);
    const { outcome: controlOutcome } = await controlWatch.settled;
    expect(controlOutcome).toBeInstanceOf(CommandExitError);
    expect((controlOutcome as CommandExitError).exitCode).not.toBe(0);
  });

  it('lets a command on a sandbox that is not killed run to its end with its output', async () => {
    const startedAt = Date.now();
    const result = await control.commands.run('sleep 3; echo done');
    expect(Date.now() - startedAt).toBeGreaterThanOrEqual(3_000);
    expect(result).toMatchObject({ exitCode: 0, stdout: 'done\n' });
  });
});
