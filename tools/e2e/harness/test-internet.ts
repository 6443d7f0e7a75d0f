import { ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A "public" host: a documentation address (TEST-NET-2), never a real one. */
export const PUBLIC_HOST = '198.51.100.7';
/** A second public stand-in, so one can be denied while the other stays reachable. */
export const OTHER_PUBLIC_HOST = '198.51.100.8';
/** A private-range host (RFC1918): behind the platform floor unless an operator opens its range. */
export const PRIVATE_HOST = '10.213.77.1';
/** A private-range host inside the range the e2e stack's operator setting opens (KILN_EGRESS_OPEN_RANGES). */
export const OPENED_PRIVATE_HOST = '10.213.78.1';
export const OPENED_PRIVATE_RANGE = '10.213.78.0/24';
/** A name the optional DNS server answers with PUBLIC_HOST. */
export const PUBLIC_NAME = 'public.test';

export interface TestInternetOptions {
  /** Also run a DNS server at this address (routed like the hosts) answering PUBLIC_NAME; a platform resolver. */
  dnsServerAt?: string;
}

/** This folder's scripts; benchmarks run bundled from a temporary folder, in the repository's root. */
const HARNESS_DIR = existsSync(join(__dirname, 'test-internet.cjs')) ? __dirname : join(process.cwd(), 'tools', 'e2e', 'harness');
const NETNS = 'ke2e-inet';
const HOST_LINK = 'ke2einet-h';
/** The link between the host and the stand-in hosts (TEST-NET-1): the hosts sit behind it, as the internet does. */
const LINK_HOST_IP = '192.0.2.1';
const LINK_PEER_IP = '192.0.2.2';

/**
 * Test hosts for egress checks in a network namespace the test owns, routed from the host through one link, so
 * sandbox traffic reaches them exactly as it would reach the internet (slot NAT, then the host's routing). Every
 * address is a documentation or test range on this machine only.
 */
export class TestInternet {
  private constructor(
    private readonly servers: ChildProcess[],
    private readonly certDir: string,
  ) {}

  static async start(options: TestInternetOptions = {}): Promise<TestInternet> {
    TestInternet.remove();
    const certDir = mkdtempSync(join(tmpdir(), 'kiln-e2e-tls-'));
    const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=kiln-e2e', '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem')]);
      run('ip', ['netns', 'add', NETNS]);
      run('ip', ['link', 'add', HOST_LINK, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', NETNS]);
      run('ip', ['addr', 'add', `${LINK_HOST_IP}/30`, 'dev', HOST_LINK]);
      run('ip', ['link', 'set', HOST_LINK, 'up']);
      run('ip', ['-n', NETNS, 'link', 'set', 'lo', 'up']);
      run('ip', ['-n', NETNS, 'addr', 'add', `${LINK_PEER_IP}/30`, 'dev', 'eth0']);
      run('ip', ['-n', NETNS, 'link', 'set', 'eth0', 'up']);
      run('ip', ['-n', NETNS, 'route', 'add', 'default', 'via', LINK_HOST_IP]);
      for (const address of [PUBLIC_HOST, OTHER_PUBLIC_HOST, PRIVATE_HOST, OPENED_PRIVATE_HOST, ...(options.dnsServerAt ? [options.dnsServerAt] : [])]) {
        run('ip', ['-n', NETNS, 'addr', 'add', `${address}/32`, 'dev', 'lo']);
        run('ip', ['route', 'add', `${address}/32`, 'via', LINK_PEER_IP, 'dev', HOST_LINK]);
      }
    } catch (error) {
      TestInternet.remove();
      rmSync(certDir, { recursive: true, force: true });
      throw error;
    }
    const internet = new TestInternet([], certDir);
    try {
      internet.servers.push(await startInNetns('test-internet.cjs', [join(certDir, 'cert.pem'), join(certDir, 'key.pem')]));
      if (options.dnsServerAt) internet.servers.push(await startInNetns('tiny-dns-server.cjs', [options.dnsServerAt, PUBLIC_NAME, PUBLIC_HOST]));
    } catch (error) {
      await internet.stop();
      throw error;
    }
    return internet;
  }

  async stop(): Promise<void> {
    for (const server of this.servers) {
      if (server.exitCode !== null || server.signalCode !== null) continue;
      const exited = new Promise<void>((resolve) => server.once('exit', () => resolve()));
      server.kill('SIGTERM');
      const timer = setTimeout(() => server.kill('SIGKILL'), 2_000);
      await exited;
      clearTimeout(timer);
    }
    TestInternet.remove();
    rmSync(this.certDir, { recursive: true, force: true });
  }

  /** Removes the namespace (and with it the link and the host routes through it); a no-op when absent. */
  private static remove(): void {
    spawnSync('ip', ['netns', 'del', NETNS]);
    spawnSync('ip', ['link', 'del', HOST_LINK]);
  }
}

/** Starts one of the harness's scripts inside the namespace; resolves once it prints its first line. */
async function startInNetns(script: string, args: string[]): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', NETNS, process.execPath, join(HARNESS_DIR, script), ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.stdout!.once('data', () => resolve());
    child.once('exit', (code) => reject(new Error(`${script} in ${NETNS} exited with ${code}`)));
  });
  return child;
}
