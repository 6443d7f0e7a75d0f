// End-to-end check of the bundled agent inside a real guest: boots the registered base image (kernel, initramfs,
// rootfs from tools/guest-image) under QEMU microvm with this checkout's bundle copied into a scratch copy of the
// rootfs, then drives it with the official e2b SDK through a loopback port forward. QEMU's user network runs with
// restrict=on, so the guest can reach nothing; the only traffic is the host's own loopback connection.
//
// Run as root after `npx nx run guest-agent:bundle` and `npx nx run guest-image:build`:
//   node apps/guest-agent/tools/vm-smoke.mjs [imageDir]      (default $KILN_DATA_DIR/images/current-base,
//   KILN_DATA_DIR defaulting to /var/lib/kiln); also the project's `e2e` target.
// Checks: tini is PID 1 and the agent's parent, /init steps the guest clock, reseeds its CRNG and writes
// resolv.conf (guest only), env vars from /init,
// the agent's OOM protection and its commands' normal OOM score,
// commands as user, PTY size and sudo, 5 MiB binary file round trip, metrics. Exits non-zero on any failure.
import { spawn, execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const appRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
const bundle = join(appRoot, 'dist', 'bundle');
const image = process.argv[2] ?? join(process.env.KILN_DATA_DIR ?? '/var/lib/kiln', 'images', 'current-base');
const { Sandbox } = createRequire(join(appRoot, 'package.json'))('e2b');

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

/**
 * Under TCG the guest kernel calibrates its TSC against the emulated PIT, which hangs when the host is busy; when
 * the host TSC is invariant, handing the guest its frequency skips that (the host agent does the same).
 */
function tscKernelArgs() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const flags = /^flags\s*:(.*)$/m.exec(cpuinfo)?.[1].split(/\s+/) ?? [];
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1]);
  if (!flags.includes('constant_tsc') || !flags.includes('nonstop_tsc') || !(mhz > 0)) return '';
  return ` tsc_early_khz=${Math.round(mhz * 1000)} tsc=reliable`;
}

const scratch = mkdtempSync(join(tmpdir(), 'kiln-ga-vm-'));
const rootfs = join(scratch, 'rootfs.ext4');
const mnt = join(scratch, 'mnt');
let qemu;
// Stopped from outside (Ctrl-C, CI timeout): take the VM and the scratch copy down too.
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    qemu?.kill('SIGKILL');
    rmSync(scratch, { recursive: true, force: true });
    process.exit(130);
  });
}
try {
  execFileSync('cp', ['--sparse=always', join(image, 'rootfs.ext4'), rootfs]);
  mkdirSync(mnt);
  execFileSync('mount', ['-o', 'loop', rootfs, mnt]);
  try {
    rmSync(join(mnt, 'opt/kiln/guest-agent'), { recursive: true, force: true });
    cpSync(bundle, join(mnt, 'opt/kiln/guest-agent'), { recursive: true });
  } finally {
    execFileSync('umount', [mnt]);
  }

  const port = await freePort();
  qemu = spawn('qemu-system-x86_64', [
    '-accel', 'tcg,thread=multi', '-m', '512M', '-smp', '1',
    '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=off',
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-serial', `file:${join(scratch, 'serial.log')}`,
    '-kernel', join(image, 'vmlinuz'), '-initrd', join(image, 'initramfs.cpio.gz'),
    '-append', `console=ttyS0 reboot=t panic=-1 kiln.ip=10.0.2.15/24 kiln.gw=10.0.2.2${tscKernelArgs()}`,
    '-drive', `id=root,file=${rootfs},format=raw,if=none`, '-device', 'virtio-blk-device,drive=root',
    '-netdev', `user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:${port}-10.0.2.15:49983`,
    '-device', 'virtio-net-device,netdev=net0',
  ], { stdio: 'inherit' });

  const url = `http://127.0.0.1:${port}`;
  const started = Date.now();
  for (;;) {
    const ok = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) }).then((r) => r.status === 204, () => false);
    if (ok) break;
    if (Date.now() - started > 120_000) throw new Error('agent in the guest never became healthy');
    await new Promise((r) => setTimeout(r, 500));
  }
  console.log(`agent healthy ${((Date.now() - started) / 1000).toFixed(1)} s after QEMU start`);

  const token = 'vm-smoke-token';
  const init = (body, headers = {}) =>
    fetch(`${url}/init`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  // The entropy seed goes through the native addon (RNDADDENTROPY + RNDRESEEDCRNG); any failure there is a 500.
  const entropySeed = Buffer.from(crypto.getRandomValues(new Uint8Array(64))).toString('base64');
  assert.equal((await init({ accessToken: token, timestamp: '2031-01-02T03:04:05Z', envVars: { FROM_INIT: 'yes' }, entropySeed, nameservers: ['10.0.2.3'] })).status, 204);
  const sbx = new Sandbox({ sandboxId: 'vm-smoke', envdVersion: '0.6.4', envdAccessToken: token, sandboxUrl: url });

  const first = await sbx.commands.run(
    'date -u +%Y-%m-%d; whoami; echo $FROM_INIT; cat /proc/1/comm; agent=$(ps -o ppid= -p $$ | tr -d " "); ' +
      'cat /proc/$(ps -o ppid= -p $agent | tr -d " ")/comm; cat /proc/$agent/oom_score_adj; cat /proc/$$/oom_score_adj; ' +
      'grep ^nameserver /etc/resolv.conf',
  );
  // Clock stepped by /init, env from /init, tini is PID 1 and the agent's parent, agent protected from the OOM
  // killer (-1000) while the command is not (100), resolv.conf from /init.
  assert.equal(first.stdout, '2031-01-02\nuser\nyes\ntini\ntini\n-1000\n100\nnameserver 10.0.2.3\n');
  assert.equal((await init({ timestamp: new Date().toISOString() }, { 'x-access-token': token })).status, 204);
  assert.equal((await sbx.commands.run('date -u +%Y-%m-%d')).stdout.trim(), new Date().toISOString().slice(0, 10));

  let screen = '';
  const term = await sbx.pty.create({ cols: 90, rows: 33, onData: (d) => (screen += new TextDecoder().decode(d)) });
  await sbx.pty.sendInput(term.pid, new TextEncoder().encode('tty; stty size; sudo -n whoami; exit\n'));
  await term.wait().catch(() => undefined);
  assert.match(screen, /\/dev\/pts\/\d+\r\n33 90\r\nroot\r\n/);

  const bytes = new Uint8Array(5 * 1024 * 1024).map((_, i) => (i * 31) % 251);
  await sbx.files.write('/home/user/blob.bin', bytes.buffer);
  const back = await sbx.files.read('/home/user/blob.bin', { format: 'bytes' });
  assert.equal(Buffer.compare(Buffer.from(back), Buffer.from(bytes)), 0);
  assert.equal((await sbx.files.getInfo('/home/user/blob.bin')).owner, 'user');

  const metrics = await (await fetch(`${url}/metrics`, { headers: { 'x-access-token': token } })).json();
  assert.ok(metrics.mem_total > 0 && metrics.disk_total > 0 && metrics.cpu_count >= 1);
  console.log('vm smoke: all checks passed');
} catch (err) {
  console.error('vm smoke FAILED:', err);
  try {
    console.error(readFileSync(join(scratch, 'serial.log'), 'utf8').split('\n').slice(-20).join('\n'));
  } catch {
    // no serial log yet
  }
  process.exitCode = 1;
} finally {
  qemu?.kill('SIGKILL');
  rmSync(scratch, { recursive: true, force: true });
}
