import { spawn, type ChildProcess } from 'node:child_process';
import { runHostCommand } from '../../src/host-command/host-command';
import { GATEWAY_IP, GUEST_IP, GUEST_MAC, PREFIX, TAP_MAC, TAP_NAME, type NetworkSlot } from '../../src/network';

/**
 * Test topology around the slot pool. A real guest needs a VM; here a plain namespace stands in for it: the slot's
 * tap0 is swapped for a veth named tap0 whose peer (in the "guest" namespace) carries the guest's fixed IP and MAC.
 * An "outside" namespace plays the internet for egress checks. Only addresses inside these namespaces are used.
 */

export const ip = (...args: string[]) => runHostCommand('ip', args);

export async function netnsExists(name: string): Promise<boolean> {
  const { stdout } = await ip('-j', 'netns', 'list');
  return (JSON.parse(stdout || '[]') as { name: string }[]).some((n) => n.name === name);
}

export async function deleteNetnsIfPresent(name: string): Promise<void> {
  if (await netnsExists(name)) await ip('netns', 'del', name);
}

export async function deleteLinkIfPresent(name: string): Promise<void> {
  await runHostCommand('ip', ['link', 'del', name], { acceptExitCodes: [1, 2] });
}

/** Replaces the slot's tap with a veth into a new namespace configured exactly as a guest would be. */
export async function attachFakeGuest(slot: NetworkSlot, guestNetns: string): Promise<void> {
  await ip('netns', 'add', guestNetns);
  await runHostCommand('ip', ['-n', slot.netnsName, '-batch', '-'], {
    input: [
      `link del ${TAP_NAME}`,
      `link add ${TAP_NAME} type veth peer name eth0 netns ${guestNetns}`,
      `link set ${TAP_NAME} address ${TAP_MAC}`,
      `addr add ${GATEWAY_IP}/${PREFIX} dev ${TAP_NAME}`,
      `link set ${TAP_NAME} up`,
      `neigh replace ${GUEST_IP} lladdr ${GUEST_MAC} dev ${TAP_NAME} nud permanent`,
    ].join('\n'),
  });
  await runHostCommand('ip', ['-n', guestNetns, '-batch', '-'], {
    input: [
      'link set lo up',
      `link set eth0 address ${GUEST_MAC}`,
      `addr add ${GUEST_IP}/${PREFIX} dev eth0`,
      'link set eth0 up',
      `route add default via ${GATEWAY_IP}`,
    ].join('\n'),
  });
}

/**
 * Creates `name` linked to the root namespace by `hostIf`: a /30 transit link (hostIp on the host, peerIp inside),
 * and a default route back through it. The transit subnet is one of the host's own networks, which sandboxes may
 * not reach (the platform floor); "internet" addresses go on the namespace's loopback with `addRoutedAddresses`.
 */
export async function createOutsideNetns(name: string, hostIf: string, hostIp: string, peerIp: string): Promise<void> {
  await ip('netns', 'add', name);
  await runHostCommand('ip', ['-batch', '-'], {
    input: [
      `link add ${hostIf} type veth peer name eth0 netns ${name}`,
      `addr add ${hostIp}/30 dev ${hostIf}`,
      `link set ${hostIf} up`,
    ].join('\n'),
  });
  await runHostCommand('ip', ['-n', name, '-batch', '-'], {
    input: ['link set lo up', `addr add ${peerIp}/30 dev eth0`, 'link set eth0 up', `route add default via ${hostIp}`].join('\n'),
  });
}

/**
 * Puts `addresses` (as /32s) on the outside namespace's loopback and routes `route` to them from the host through
 * the transit link: destinations beyond the host's own networks, as the internet is. The route goes with the link.
 */
export async function addRoutedAddresses(netns: string, peerIp: string, route: string, addresses: readonly string[]): Promise<void> {
  await runHostCommand('ip', ['-n', netns, '-batch', '-'], { input: addresses.map((a) => `addr add ${a}/32 dev lo`).join('\n') + '\n' });
  await ip('route', 'replace', route, 'via', peerIp);
}

/**
 * A TCP server inside a namespace that answers each connection with the peer address it sees (so tests can check
 * NAT), then closes. Resolves once it listens.
 */
export class NetnsEchoServer {
  private constructor(private readonly child: ChildProcess) {}

  static start(netns: string, host: string, port: number): Promise<NetnsEchoServer> {
    const script = `
      const net = require('node:net');
      const server = net.createServer((s) => s.end(JSON.stringify({ seenFrom: s.remoteAddress })));
      server.listen(${port}, ${JSON.stringify(host)}, () => process.stdout.write('listening\\n'));
      process.stdin.on('end', () => process.exit(0)); process.stdin.resume();`;
    const child = spawn('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
    return new Promise((resolve, reject) => {
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdout.on('data', (d: Buffer) => {
        if (d.toString().includes('listening')) resolve(new NetnsEchoServer(child));
      });
      child.on('exit', (code) => reject(new Error(`echo server in ${netns} exited with ${code}: ${stderr}`)));
    });
  }

  stop(): Promise<void> {
    return stopNetnsChild(this.child);
  }
}

export type ProbeResult = { ok: true; seenFrom: string } | { ok: false; code: string };

/** One TCP connection attempt made from inside `netns` (a stand-in guest), with a short timeout. */
export async function probeFromNetns(netns: string, host: string, port: number, timeoutMs = 2_000): Promise<ProbeResult> {
  const script = `
    const net = require('node:net');
    const s = net.connect({ host: ${JSON.stringify(host)}, port: ${port}, timeout: ${timeoutMs} });
    let data = '';
    s.on('data', (d) => (data += d));
    s.on('end', () => { process.stdout.write(JSON.stringify({ ok: true, ...JSON.parse(data) })); process.exit(0); });
    s.on('timeout', () => { process.stdout.write(JSON.stringify({ ok: false, code: 'TIMEOUT' })); process.exit(0); });
    s.on('error', (e) => { process.stdout.write(JSON.stringify({ ok: false, code: e.code })); process.exit(0); });`;
  const { stdout } = await runHostCommand('ip', ['netns', 'exec', netns, process.execPath, '-e', script], {
    timeoutMs: timeoutMs + 5_000,
  });
  return JSON.parse(stdout) as ProbeResult;
}

/** The same probe from the test process itself, i.e. from the host's root namespace. */
export async function probeFromHost(host: string, port: number, timeoutMs = 2_000): Promise<ProbeResult> {
  const net = await import('node:net');
  return new Promise((resolve) => {
    const s = net.connect({ host, port, timeout: timeoutMs });
    let data = '';
    s.on('data', (d) => (data += d.toString()));
    s.on('end', () => resolve({ ok: true, ...(JSON.parse(data) as { seenFrom: string }) }));
    s.on('timeout', () => {
      s.destroy();
      resolve({ ok: false, code: 'TIMEOUT' });
    });
    s.on('error', (e: NodeJS.ErrnoException) => resolve({ ok: false, code: e.code ?? 'ERROR' }));
  });
}

/** Stops a server a test runs in a namespace: closing its stdin makes it exit; kill is the fallback should it hang. */
export async function stopNetnsChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.stdin?.end();
  const timer = setTimeout(() => child.kill('SIGKILL'), 2_000);
  await exited;
  clearTimeout(timer);
}
