import 'reflect-metadata';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Module, type INestApplicationContext } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { EgressPolicy } from '@kiln/contracts';
import { EgressProxy, EgressProxyModule } from '../../src/egress-proxy';
import { runHostCommand } from '../../src/host-command/host-command';
import { NetworkModule, NetworkSlotPool, type NetworkOptions, type NetworkSlot } from '../../src/network';
import {
  addRoutedAddresses,
  attachFakeGuest,
  createOutsideNetns,
  deleteLinkIfPresent,
  deleteNetnsIfPresent,
  ip,
  NetnsEchoServer,
  probeFromHost,
  probeFromNetns,
  stopNetnsChild,
} from './netns-fixtures';

jest.setTimeout(90_000);

/*
 * Egress policy enforcement end to end on real namespaces: slots, a stand-in guest namespace per slot, and an
 * "outside" namespace behind a /30 transit link that holds a public stand-in (198.51.100.128/26, routed) and a
 * private-range stand-in (10.213.77.0/24, routed). The egress proxy runs in this process, as in the agent.
 * Names, addresses and ports are private to this file.
 */
const PREFIX = 'ktegr';
const SLOT_CIDR = '10.214.0.0/24';
const OPEN_PREFIX = 'ktegp';
const OPEN_SLOT_CIDR = '10.214.1.0/28';
const PROXY_PORT = 15_008;
const OUT_NETNS = 'ktegr-out';
const OUT_IF = 'ktegr-o';
const TRANSIT_HOST = '198.51.100.253';
const TRANSIT_PEER = '198.51.100.254';
const PUBLIC_ROUTE = '198.51.100.128/26';
const PUBLIC_A = '198.51.100.130';
const PUBLIC_B = '198.51.100.131';
/** Not on any interface: the host DNATs it (a "published port") in the DNAT test. */
const PUBLISHED = '198.51.100.150';
const PRIVATE_ROUTE = '10.213.77.0/24';
const PRIVATE_HOST = '10.213.77.1';
/** The platform's resolver, in a private range on purpose: DNS to it is allowed even though the range is not. */
const RESOLVER = '10.213.77.53';
const HOST_SERVICE_PORT = 18_083;
const DNAT_TABLE = 'ktegrdnat';
const GUEST_NETNS = (n: number) => `ktegr-guest-${n}`;
const MAX_GUEST_NETNS = 12;
const REJECTED = { ok: false, code: 'EHOSTUNREACH' };
const DENY_ALL: EgressPolicy = { allowOut: [], denyOut: ['0.0.0.0/0'] };
const ALLOWED_NAME = 'allowed.test';
const OTHER_NAME = 'blocked.test';
const DOMAIN_POLICY: EgressPolicy = { allowOut: [ALLOWED_NAME], denyOut: ['0.0.0.0/0'] };
const EVERY_FAILURE = Array.from({ length: 99 }, (_, i) => i + 1);

interface TestAgent {
  app: INestApplicationContext;
  pool: NetworkSlotPool;
  proxy?: EgressProxy;
}

async function startAgent(options: Partial<NetworkOptions>, withProxy: boolean): Promise<TestAgent> {
  const network = NetworkModule.register({ maxSlots: 4, prefill: 1, maxIdle: 2, dnsResolvers: [RESOLVER], ...options });
  const imports = withProxy ? [network, EgressProxyModule.register(network, { port: PROXY_PORT, peekTimeoutMs: 2_000 })] : [network];
  @Module({ imports })
  class EgressTestModule {}
  const app = await NestFactory.createApplicationContext(EgressTestModule, { logger: false, abortOnError: false });
  return { app, pool: app.get(NetworkSlotPool), proxy: withProxy ? app.get(EgressProxy) : undefined };
}

/** HTTP on :80 (answers with the Host it got) and HTTPS on :443 (answers with the SNI it got) on each address. */
class NetnsWebServer {
  private constructor(private readonly child: ChildProcess) {}

  static start(netns: string, addresses: string[], certDir: string): Promise<NetnsWebServer> {
    const script = `
      const http = require('node:http'), https = require('node:https'), fs = require('node:fs');
      const tls = { key: fs.readFileSync(${JSON.stringify(join(certDir, 'key.pem'))}), cert: fs.readFileSync(${JSON.stringify(join(certDir, 'cert.pem'))}) };
      let pending = 0;
      const ready = () => { if (--pending === 0) process.stdout.write('listening\\n'); };
      for (const host of ${JSON.stringify(addresses)}) {
        pending += 2;
        http.createServer((q, s) => s.end(JSON.stringify({ host: q.headers.host }))).listen(80, host, ready);
        https.createServer(tls, (q, s) => s.end(JSON.stringify({ sni: q.socket.servername }))).listen(443, host, ready);
      }
      process.stdin.on('end', () => process.exit(0)); process.stdin.resume();`;
    const child = spawn('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'pipe'] });
    return new Promise((resolve, reject) => {
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.stdout.on('data', (d: Buffer) => d.toString().includes('listening') && resolve(new NetnsWebServer(child)));
      child.on('exit', (code) => reject(new Error(`web server exited with ${code}: ${stderr}`)));
    });
  }

  stop(): Promise<void> {
    return stopNetnsChild(this.child);
  }
}

type CurlResult = { ok: true; body: unknown } | { ok: false; exitCode: number };

/** curl from inside a namespace (a stand-in guest, or null for the host); `args` go before the URL. */
async function curl(netns: string | null, url: string, args: string[] = []): Promise<CurlResult> {
  const curlArgs = ['-sS', '-m', '5', ...args, url];
  const { exitCode, stdout } = netns
    ? await runHostCommand('ip', ['netns', 'exec', netns, 'curl', ...curlArgs], { acceptExitCodes: EVERY_FAILURE, timeoutMs: 10_000 })
    : await runHostCommand('curl', curlArgs, { acceptExitCodes: EVERY_FAILURE, timeoutMs: 10_000 });
  return exitCode === 0 ? { ok: true, body: JSON.parse(stdout) } : { ok: false, exitCode };
}

/** HTTP to `address` with the given Host header. */
const httpAs = (netns: string | null, address: string, name: string) => curl(netns, `http://${address}/`, ['-H', `Host: ${name}`]);

/** HTTPS to `address` with `name` as SNI (and certificate name), trusting the test's self-signed certificate. */
const httpsAs = (netns: string | null, address: string, name: string, certDir: string) =>
  curl(netns, `https://${name}/`, ['--resolve', `${name}:443:${address}`, '--cacert', join(certDir, 'cert.pem')]);

/** One UDP datagram to host:port from inside `netns`; ok when the echo comes back. */
async function udpProbe(netns: string, host: string, port: number): Promise<boolean> {
  const script = `
    const s = require('node:dgram').createSocket('udp4');
    s.on('message', () => { process.stdout.write('reply'); process.exit(0); });
    s.on('error', () => process.exit(0));
    s.send('ping', ${port}, ${JSON.stringify(host)});
    setTimeout(() => process.exit(0), 1500);`;
  const { stdout } = await runHostCommand('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { timeoutMs: 10_000 });
  return stdout === 'reply';
}

async function startUdpEcho(netns: string, host: string, port: number): Promise<ChildProcess> {
  const script = `
    const s = require('node:dgram').createSocket('udp4');
    s.on('message', (m, r) => s.send(m, r.port, r.address));
    s.bind(${port}, ${JSON.stringify(host)}, () => process.stdout.write('listening\\n'));
    process.stdin.on('end', () => process.exit(0)); process.stdin.resume();`;
  const child = spawn('ip', ['netns', 'exec', netns, process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`udp echo exited with ${code}`)));
  });
  return child;
}

async function proxiedSlotSet(): Promise<string> {
  const { stdout } = await runHostCommand('nft', ['list', 'set', 'inet', PREFIX, 'proxied_slots']);
  return stdout;
}

async function removeTestNetwork(): Promise<void> {
  for (let n = 0; n < MAX_GUEST_NETNS; n++) await deleteNetnsIfPresent(GUEST_NETNS(n));
  await deleteLinkIfPresent(OUT_IF);
  await deleteNetnsIfPresent(OUT_NETNS);
  await runHostCommand('nft', ['delete', 'table', 'ip', DNAT_TABLE], { acceptExitCodes: [1] });
}

describe('egress policy enforcement (platform floor, DNS, domain rules through the egress proxy)', () => {
  let originalIpForward: string;
  let agent: TestAgent | undefined;
  let openAgent: TestAgent | undefined;
  let certDir: string;
  const children: ChildProcess[] = [];
  const servers: { stop(): Promise<void> }[] = [];
  let hostService: Server | undefined;
  let guestCounter = 0;
  const held = new Map<NetworkSlot, NetworkSlotPool>();

  const pool = () => agent!.pool;
  const proxy = () => agent!.proxy!;
  /** A leased slot with a stand-in guest attached and the policy a sandbox without rules gets (slots start closed). */
  const guestSlot = async (from: NetworkSlotPool = pool()) => {
    const slot = await from.acquire();
    held.set(slot, from);
    const guest = GUEST_NETNS(guestCounter++);
    await attachFakeGuest(slot, guest);
    await from.setEgressPolicy(slot, {});
    return { slot, guest };
  };
  const release = async (slot: NetworkSlot) => {
    const owner = held.get(slot);
    held.delete(slot);
    await owner?.release(slot);
  };

  beforeAll(async () => {
    originalIpForward = await readFile('/proc/sys/net/ipv4/ip_forward', 'utf8');
    await removeTestNetwork();
    for (const [prefix, slotCidr] of [[PREFIX, SLOT_CIDR], [OPEN_PREFIX, OPEN_SLOT_CIDR]]) {
      const leftover = await startAgent({ namePrefix: prefix, slotCidr, prefill: 0 }, false);
      await leftover.pool.destroyAll();
      await leftover.app.close();
    }

    certDir = await mkdtemp(join(tmpdir(), 'ktegr-cert-'));
    await runHostCommand('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem'), '-subj', `/CN=${ALLOWED_NAME}`,
      '-addext', `subjectAltName=DNS:${ALLOWED_NAME},DNS:${OTHER_NAME}`,
    ]);

    await createOutsideNetns(OUT_NETNS, OUT_IF, TRANSIT_HOST, TRANSIT_PEER);
    await addRoutedAddresses(OUT_NETNS, TRANSIT_PEER, PUBLIC_ROUTE, [PUBLIC_A, PUBLIC_B]);
    await addRoutedAddresses(OUT_NETNS, TRANSIT_PEER, PRIVATE_ROUTE, [PRIVATE_HOST, RESOLVER]);
    for (const [host, port] of [[PUBLIC_A, 8080], [PUBLIC_B, 8080], [PRIVATE_HOST, 8080], [TRANSIT_PEER, 8080], [RESOLVER, 53], [RESOLVER, 8080], [PUBLIC_A, 53]] as const) {
      servers.push(await NetnsEchoServer.start(OUT_NETNS, host, port));
    }
    servers.push(await NetnsWebServer.start(OUT_NETNS, [PUBLIC_A, PRIVATE_HOST], certDir));
    children.push(await startUdpEcho(OUT_NETNS, RESOLVER, 53), await startUdpEcho(OUT_NETNS, PUBLIC_A, 53));
    hostService = createServer((s) => s.end(JSON.stringify({ seenFrom: s.remoteAddress })));
    await new Promise<void>((resolve) => hostService!.listen(HOST_SERVICE_PORT, '0.0.0.0', resolve));

    // The agent starts after the test network exists: the transit link is one of "the host's networks" it reads.
    agent = await startAgent({ namePrefix: PREFIX, slotCidr: SLOT_CIDR, egressProxyPort: PROXY_PORT }, true);
    await agent.pool.init([]);
  });

  afterAll(async () => {
    for (const slot of [...held.keys()]) await release(slot).catch(() => undefined);
    await Promise.allSettled(servers.map((s) => s.stop()));
    for (const child of children) child.kill();
    await new Promise<void>((resolve) => (hostService ? hostService.close(() => resolve()) : resolve()));
    try {
      for (const a of [agent, openAgent]) {
        if (!a) continue;
        await a.pool.destroyAll();
        await a.app.close();
      }
    } finally {
      await removeTestNetwork();
      if (certDir) await rm(certDir, { recursive: true, force: true });
      const { stdout } = await ip('-j', 'netns', 'list');
      const otherPools = (JSON.parse(stdout || '[]') as { name: string }[]).some((n) => /-slot-\d+$/.test(n.name));
      if (!otherPools) await writeFile('/proc/sys/net/ipv4/ip_forward', originalIpForward);
    }
  });

  it('reaches a public host, but no private range, host network, metadata address or host service', async () => {
    const { slot, guest } = await guestSlot();
    try {
      // Controls: every target is up and answers the host; the guest reaches the public one.
      expect(await probeFromNetns(guest, PUBLIC_A, 8080)).toEqual({ ok: true, seenFrom: TRANSIT_HOST });
      for (const target of [PRIVATE_HOST, TRANSIT_PEER]) expect(await probeFromHost(target, 8080)).toMatchObject({ ok: true });
      expect(await probeFromHost('127.0.0.1', HOST_SERVICE_PORT)).toMatchObject({ ok: true });

      expect(await probeFromNetns(guest, PRIVATE_HOST, 8080)).toEqual(REJECTED);
      // The transit peer is "public" space, but on one of the host's own networks.
      expect(await probeFromNetns(guest, TRANSIT_PEER, 8080)).toEqual(REJECTED);
      expect(await probeFromNetns(guest, '169.254.169.254', 80)).toEqual(REJECTED);
      const hostSideIp = slot.hostAddress.replace(/\d+$/, (n) => String(Number(n) - 1));
      for (const hostAddress of [hostSideIp, TRANSIT_HOST, '192.0.2.2']) {
        expect(await probeFromNetns(guest, hostAddress, HOST_SERVICE_PORT)).toEqual(REJECTED);
        // Nor the egress proxy's port, unless the host redirected the connection there itself.
        expect(await probeFromNetns(guest, hostAddress, PROXY_PORT)).toEqual(REJECTED);
      }
      // An allowOut entry cannot open the floor.
      await pool().setEgressPolicy(slot, { allowOut: [`${PRIVATE_HOST}/32`, '169.254.0.0/16'], denyOut: [] });
      expect(await probeFromNetns(guest, PRIVATE_HOST, 8080)).toEqual(REJECTED);
      expect(await probeFromNetns(guest, PUBLIC_A, 8080)).toMatchObject({ ok: true });
    } finally {
      await release(slot);
    }
  });

  it('blocks the public host under deny-all, and an allowOut CIDR opens it again', async () => {
    const { slot, guest } = await guestSlot();
    try {
      expect(await probeFromNetns(guest, PUBLIC_B, 8080)).toMatchObject({ ok: true });
      await pool().setEgressPolicy(slot, DENY_ALL);
      expect(await probeFromNetns(guest, PUBLIC_A, 8080)).toEqual(REJECTED);
      expect(await probeFromNetns(guest, PUBLIC_B, 8080)).toEqual(REJECTED);
      await pool().setEgressPolicy(slot, { allowOut: [`${PUBLIC_A}/32`], denyOut: ['0.0.0.0/0'] });
      expect(await probeFromNetns(guest, PUBLIC_A, 8080)).toMatchObject({ ok: true });
      expect(await probeFromNetns(guest, PUBLIC_B, 8080)).toEqual(REJECTED);
      expect(pool().egressPolicyOf(slot.index)?.policy).toEqual({ allowOut: [`${PUBLIC_A}/32`], denyOut: ['0.0.0.0/0'] });
    } finally {
      await release(slot);
    }
  });

  it('lets DNS go to the platform resolver only, even under deny-all and though its range is closed', async () => {
    const { slot, guest } = await guestSlot();
    try {
      // Control: the public host answers on other ports, and the resolver answers the host on 53.
      expect(await probeFromNetns(guest, PUBLIC_A, 8080)).toMatchObject({ ok: true });
      expect(await probeFromHost(PUBLIC_A, 53)).toMatchObject({ ok: true });
      for (const policy of [{ allowOut: [], denyOut: [] }, DENY_ALL]) {
        await pool().setEgressPolicy(slot, policy);
        expect(await probeFromNetns(guest, RESOLVER, 53)).toMatchObject({ ok: true });
        expect(await udpProbe(guest, RESOLVER, 53)).toBe(true);
        expect(await probeFromNetns(guest, PUBLIC_A, 53)).toEqual(REJECTED);
        expect(await udpProbe(guest, PUBLIC_A, 53)).toBe(false);
        // Only port 53 is opened on the resolver.
        expect(await probeFromNetns(guest, RESOLVER, 8080)).toEqual(REJECTED);
      }
    } finally {
      await release(slot);
    }
  });

  it('lets an allowed name through the egress proxy and not another name on the same address (HTTP Host, TLS SNI)', async () => {
    const { slot, guest } = await guestSlot();
    const other = await guestSlot();
    try {
      await pool().setEgressPolicy(slot, DOMAIN_POLICY);
      expect(await proxiedSlotSet()).toContain(slot.hostAddress);
      const before = proxy().stats().verdicts;

      expect(await httpAs(guest, PUBLIC_A, ALLOWED_NAME)).toEqual({ ok: true, body: { host: ALLOWED_NAME } });
      expect(await httpsAs(guest, PUBLIC_A, ALLOWED_NAME, certDir)).toEqual({ ok: true, body: { sni: ALLOWED_NAME } });
      expect(await httpAs(guest, PUBLIC_A, OTHER_NAME)).toMatchObject({ ok: false });
      expect(await httpsAs(guest, PUBLIC_A, OTHER_NAME, certDir)).toMatchObject({ ok: false });
      // Deny-all holds for everything else, and an allowed name does not open the floor.
      expect(await probeFromNetns(guest, PUBLIC_A, 8080)).toEqual(REJECTED);
      expect(await httpAs(null, PRIVATE_HOST, ALLOWED_NAME)).toMatchObject({ ok: true });
      expect(await httpAs(guest, PRIVATE_HOST, ALLOWED_NAME)).toMatchObject({ ok: false });

      const after = proxy().stats().verdicts;
      expect(after['allow-domain'] - before['allow-domain']).toBe(2);
      expect(after['refuse-denied'] - before['refuse-denied']).toBe(2);

      // A slot without domain rules is not redirected: any name reaches the server directly.
      expect(await proxiedSlotSet()).not.toContain(other.slot.hostAddress);
      expect(await httpAs(other.guest, PUBLIC_A, OTHER_NAME)).toEqual({ ok: true, body: { host: OTHER_NAME } });
      expect(await httpsAs(other.guest, PUBLIC_A, OTHER_NAME, certDir)).toEqual({ ok: true, body: { sni: OTHER_NAME } });
      expect(proxy().stats().verdicts).toEqual(after);
    } finally {
      await release(slot);
      await release(other.slot);
    }
    // Release takes the slot out of the host's redirect.
    expect(await proxiedSlotSet()).not.toContain(slot.hostAddress);
  });

  it('follows live updates both ways', async () => {
    const { slot, guest } = await guestSlot();
    try {
      await pool().setEgressPolicy(slot, DOMAIN_POLICY);
      expect(await httpAs(guest, PUBLIC_A, ALLOWED_NAME)).toMatchObject({ ok: true });
      expect(await httpAs(guest, PUBLIC_A, OTHER_NAME)).toMatchObject({ ok: false });

      await pool().setEgressPolicy(slot, DENY_ALL);
      expect(await proxiedSlotSet()).not.toContain(slot.hostAddress);
      expect(await httpAs(guest, PUBLIC_A, ALLOWED_NAME)).toMatchObject({ ok: false });

      await pool().setEgressPolicy(slot, { allowOut: [], denyOut: [] });
      expect(await httpAs(guest, PUBLIC_A, OTHER_NAME)).toEqual({ ok: true, body: { host: OTHER_NAME } });

      await pool().setEgressPolicy(slot, DOMAIN_POLICY);
      expect(await httpsAs(guest, PUBLIC_A, ALLOWED_NAME, certDir)).toMatchObject({ ok: true });
      expect(await httpsAs(guest, PUBLIC_A, OTHER_NAME, certDir)).toMatchObject({ ok: false });
    } finally {
      await release(slot);
    }
  });

  it('refuses proxy connections that do not come from a leased slot', async () => {
    const before = proxy().stats().verdicts['refuse-source'];
    const outcome = await new Promise<string>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port: PROXY_PORT });
      socket.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      socket.on('close', () => resolve('closed'));
      socket.on('connect', () => socket.write('GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n'));
    });
    expect(['ECONNRESET', 'closed']).toContain(outcome);
    expect(proxy().stats().verdicts['refuse-source']).toBe(before + 1);
  });

  it('drops slot traffic the host would forward after a DNAT of its own (published ports)', async () => {
    const { slot, guest } = await guestSlot();
    try {
      await runHostCommand('nft', ['-f', '-'], {
        input: `table ip ${DNAT_TABLE} {\n  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr ${PUBLISHED} tcp dport 8080 dnat to ${PUBLIC_B}:8080\n  }\n}\n`,
      });
      expect(await probeFromNetns(guest, PUBLIC_B, 8080)).toMatchObject({ ok: true });
      expect(await probeFromNetns(guest, PUBLISHED, 8080, 1_500)).toEqual({ ok: false, code: 'TIMEOUT' });
    } finally {
      await runHostCommand('nft', ['delete', 'table', 'ip', DNAT_TABLE], { acceptExitCodes: [1] });
      await release(slot);
    }
  });

  it('re-applies a sandbox policy, domain rules included, when a restarted agent adopts its slot', async () => {
    const { slot, guest } = await guestSlot();
    await pool().setEgressPolicy(slot, DOMAIN_POLICY);
    held.delete(slot);
    // A new agent process: the old one stops (its proxy closes, slots stay) and the new one adopts the slot.
    await agent!.app.close();
    agent = await startAgent({ namePrefix: PREFIX, slotCidr: SLOT_CIDR, egressProxyPort: PROXY_PORT }, true);
    const report = await agent.pool.init([{ index: slot.index, egress: DOMAIN_POLICY }]);
    expect(report.adopted).toEqual([slot.index]);
    const adopted = agent.pool.leasedSlot(slot.index)!;
    held.set(adopted, agent.pool);
    try {
      expect(await proxiedSlotSet()).toContain(slot.hostAddress);
      expect(await httpAs(guest, PUBLIC_A, ALLOWED_NAME)).toMatchObject({ ok: true });
      expect(await httpAs(guest, PUBLIC_A, OTHER_NAME)).toMatchObject({ ok: false });
      expect(await probeFromNetns(guest, PUBLIC_B, 8080)).toEqual(REJECTED);
    } finally {
      await release(adopted);
    }
  });

  it('opens operator ranges from the floor, with the sandbox policy still applying to them', async () => {
    openAgent = await startAgent({ namePrefix: OPEN_PREFIX, slotCidr: OPEN_SLOT_CIDR, openRanges: [PRIVATE_ROUTE] }, false);
    await openAgent.pool.init([]);
    const { slot, guest } = await guestSlot(openAgent.pool);
    try {
      expect(await probeFromNetns(guest, PRIVATE_HOST, 8080)).toEqual({ ok: true, seenFrom: TRANSIT_HOST });
      // Only the named range: other floor ranges and the host stay closed.
      expect(await probeFromNetns(guest, TRANSIT_PEER, 8080)).toEqual(REJECTED);
      expect(await probeFromNetns(guest, TRANSIT_HOST, HOST_SERVICE_PORT)).toEqual(REJECTED);
      await openAgent.pool.setEgressPolicy(slot, DENY_ALL);
      expect(await probeFromNetns(guest, PRIVATE_HOST, 8080)).toEqual(REJECTED);
      await openAgent.pool.setEgressPolicy(slot, { allowOut: [`${PRIVATE_HOST}/32`], denyOut: ['0.0.0.0/0'] });
      expect(await probeFromNetns(guest, PRIVATE_HOST, 8080)).toMatchObject({ ok: true });
      // The first agent's pool, without the setting, still blocks it.
      const closed = await guestSlot();
      expect(await probeFromNetns(closed.guest, PRIVATE_HOST, 8080)).toEqual(REJECTED);
      await release(closed.slot);
    } finally {
      await release(slot);
    }
  });
});
