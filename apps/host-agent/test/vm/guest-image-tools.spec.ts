import { execFileSync } from 'node:child_process';
import { Agent } from 'node:http';
import { join } from 'node:path';
import { createClient, type Client } from '@connectrpc/connect';
import { createConnectTransport } from '@connectrpc/connect-node';
import { Process } from '@kiln/proto/process';
import { initGuestAgent, waitForGuestAgent } from '../../src/guest-agent-client';
import { coldBootSpec } from '../../src/template';
import { Cleanup, startVmTestApp, type VmTestApp } from './vm-test-context';

interface CommandResult {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

/**
 * The tools E2B's base template offers (python with pip and venv, node with npm and npx, git, curl, wget, unzip, jq,
 * gcc/g++/make), run in a cold-booted `base` VM the way the SDK's commands.run runs them: a login shell as the
 * default user.
 */
describe('base template tools (real TCG VM)', () => {
  let ctx: VmTestApp;
  const cleanup = new Cleanup();
  let processes: Client<typeof Process>;
  const connections = new Agent({ keepAlive: true });

  async function run(command: string, timeoutMs = 120_000): Promise<CommandResult> {
    const result: CommandResult = { exitCode: undefined, stdout: '', stderr: '' };
    for await (const response of processes.start({ process: { cmd: '/bin/bash', args: ['-l', '-c', command], envs: {} } }, { timeoutMs })) {
      const event = response.event?.event;
      if (event?.case === 'data' && event.value.output.case === 'stdout') result.stdout += Buffer.from(event.value.output.value).toString();
      if (event?.case === 'data' && event.value.output.case === 'stderr') result.stderr += Buffer.from(event.value.output.value).toString();
      if (event?.case === 'end') result.exitCode = event.value.exitCode;
    }
    return result;
  }

  /** Runs the command and fails with its output unless it exits 0. */
  async function succeeds(command: string, timeoutMs?: number): Promise<string> {
    const result = await run(command, timeoutMs);
    expect({ command, exitCode: result.exitCode, stderr: result.exitCode === 0 ? '' : result.stderr }).toEqual({ command, exitCode: 0, stderr: '' });
    return result.stdout;
  }

  beforeAll(async () => {
    ctx = await startVmTestApp();
    const base = await ctx.templates.resolve('base');
    const slot = await ctx.acquireSlot(cleanup);
    const layer = await ctx.layers.createLayer('ktvm-tools', base.rootfs, ctx.workDir);
    cleanup.add(() => ctx.layers.removeLayer(layer));
    const spec = coldBootSpec(base, {
      id: 'ktvm-tools',
      rootDisk: { path: layer.path, format: layer.format },
      slot,
      stateDir: join(ctx.workDir, 'tools-vm'),
      serialLogPath: join(ctx.workDir, 'tools-vm.serial.log'),
    });
    cleanup.vm(await ctx.driver.spawn(spec));
    await waitForGuestAgent(slot.hostAddress, base.agentPort, { timeoutMs: 120_000 });
    // As a create does: a guest without an RTC boots at the epoch, and build tools compare file times.
    await initGuestAgent(slot.hostAddress, connections, { timestamp: new Date().toISOString() }, 60_000, { port: base.agentPort });
    processes = createClient(
      Process,
      createConnectTransport({ baseUrl: `http://${slot.hostAddress}:${base.agentPort}`, httpVersion: '1.1', nodeOptions: { agent: connections } }),
    );
  }, 180_000);

  afterAll(async () => {
    connections.destroy();
    try {
      await cleanup.run();
    } finally {
      await ctx?.close();
    }
  });

  it('runs commands as the default user', async () => {
    expect(await succeeds('id -un')).toBe('user\n');
  });

  it('has python (python3), pip, and venv with its own pip', async () => {
    expect(await succeeds('python --version')).toMatch(/^Python 3\.\d+\.\d+\n$/);
    expect(await succeeds('readlink -f "$(command -v python)"')).toMatch(/^\/usr\/bin\/python3\.\d+\n$/);
    expect(await succeeds('pip --version')).toMatch(/^pip \d+(\.\d+)+ from \S+ \(python 3\.\d+\)\n$/);
    // ensurepip installs pip into the venv from the wheels python3-venv ships: no network needed.
    // Slow under TCG (ensurepip byte-compiles pip: over a minute on a busy 2-core host).
    expect(await succeeds('python -m venv /tmp/v && /tmp/v/bin/pip --version', 360_000)).toMatch(/^pip \d+(\.\d+)+ from \/tmp\/v\/lib\/python3\.\d+\/site-packages\/pip /);
  }, 420_000);

  it("has the host's node, with the npm and npx distributed beside it", async () => {
    expect(await succeeds('node -e "console.log(process.version, 6 * 7)"')).toBe(`${process.version} 42\n`);
    const hostNpm = execFileSync('npm', ['--version'], { encoding: 'utf8' });
    expect(await succeeds('npm --version')).toBe(hostNpm);
    expect(await succeeds('npx --version')).toBe(hostNpm);
    // A node distribution's layout: global installs land beside npm under /usr/local, not in a second node's tree.
    expect(await succeeds('npm root -g')).toBe('/usr/local/lib/node_modules\n');
    expect(await succeeds('ls /usr/lib/node_modules /usr/bin/nodejs 2>/dev/null; type -a -P node')).toBe('/usr/local/bin/node\n');
  }, 120_000);

  it.each([
    ['git --version', /^git version \d+\./],
    ['curl --version', /^curl \d+\./],
    ['wget --version', /^GNU Wget \d+\./],
    ['unzip -v', /^UnZip \d+\./],
    ['jq --version', /^jq-\d+\./],
    ['gcc --version', /^gcc \(Debian [^)]+\) \d+\./],
    ['g++ --version', /^g\+\+ \(Debian [^)]+\) \d+\./],
    ['make --version', /^GNU Make \d+\./],
  ])('%s exits 0', async (command, firstLine) => {
    expect(await succeeds(command)).toMatch(firstLine);
  });

  it('compiles and runs a C program with gcc, and builds one with make and g++', async () => {
    const c = `cd "$(mktemp -d)" && printf '#include <stdio.h>\\nint main(void) { printf("%%d\\\\n", 6 * 7); return 0; }\\n' >t.c && gcc -O2 -o t t.c && ./t`;
    expect(await succeeds(c, 200_000)).toBe('42\n');
    const cxx = `cd "$(mktemp -d)" && printf '#include <cstdio>\\n#include <string>\\nint main() { std::puts(std::string("kiln").c_str()); }\\n' >t.cpp && make -s CXX=g++ t && ./t`;
    expect(await succeeds(cxx, 200_000)).toBe('kiln\n');
  }, 240_000);

  it('leaves the user at least 1.5 GiB free on the root filesystem', async () => {
    const availableKib = Number((await succeeds("df -k --output=avail / | tail -n 1")).trim());
    expect(availableKib).toBeGreaterThanOrEqual(1.5 * 1024 * 1024);
  });
});
