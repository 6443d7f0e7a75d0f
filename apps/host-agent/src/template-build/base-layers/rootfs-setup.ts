import { access, appendFile, chmod, chown, lstat, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { KilnRuntime } from './kiln-runtime';
import { resolveInRoot } from './root-path';
import { runTool } from './tool-runner';

const DEFAULT_USER = 'user';
const DEFAULT_UID = 1000;

/**
 * Makes an unpacked rootfs bootable by Kiln: the runtime under /opt/kiln, the mount points the init needs, E2B's
 * default user, and the network files the base template has. Every path is resolved inside the rootfs
 * (resolveInRoot): the image is untrusted and its symlinks must not lead writes onto the host.
 */
export async function prepareRootfs(rootfs: string, runtime: KilnRuntime, signal: AbortSignal, log: (line: string) => void): Promise<void> {
  const optKiln = await resolveInRoot(rootfs, '/opt/kiln');
  await rm(optKiln, { recursive: true, force: true });
  await mkdir(dirname(optKiln), { recursive: true, mode: 0o755 });
  await runTool('cp', ['-a', '--', join(runtime.treeDir, 'opt/kiln'), optKiln], { signal });

  for (const dir of ['/proc', '/sys', '/dev', '/tmp', '/run', '/root', '/etc']) {
    await mkdir(await resolveInRoot(rootfs, dir), { recursive: true, mode: dir === '/tmp' ? 0o1777 : 0o755 });
  }
  await ensureRegularFile(rootfs, '/etc/hostname', 'kiln\n');
  await ensureRegularFile(rootfs, '/etc/hosts', '127.0.0.1 localhost\n127.0.1.1 kiln\n::1 localhost ip6-localhost ip6-loopback\n');
  // Images often point resolv.conf at a resolver that does not run here (systemd-resolved's stub); the host writes
  // the sandbox's nameservers into a plain file.
  const etc = await resolveInRoot(rootfs, '/etc');
  const isLink = await lstat(join(etc, 'resolv.conf')).then((stat) => stat.isSymbolicLink(), () => false);
  if (isLink) await rm(join(etc, 'resolv.conf'), { force: true });
  await ensureRegularFile(rootfs, '/etc/resolv.conf', '');

  await ensureDefaultUser(rootfs, signal, log);
}

async function ensureRegularFile(rootfs: string, path: string, content: string): Promise<void> {
  const hostPath = await resolveInRoot(rootfs, path);
  if (await exists(hostPath)) return;
  await mkdir(dirname(hostPath), { recursive: true, mode: 0o755 });
  await writeFile(hostPath, content, { mode: 0o644 });
}

/**
 * E2B's SDK runs commands as `user` unless told otherwise: the image gets one (uid 1000 when free, home /home/user,
 * passwordless sudo when the image has sudo) unless it has one already. Written straight into passwd/group/shadow:
 * useradd may be missing, and running the image's own binaries on the host is out of the question.
 */
async function ensureDefaultUser(rootfs: string, signal: AbortSignal, log: (line: string) => void): Promise<void> {
  const passwdPath = await resolveInRoot(rootfs, '/etc/passwd');
  const groupPath = await resolveInRoot(rootfs, '/etc/group');
  const passwd = await readFile(passwdPath, 'utf8').catch(() => '');
  const group = await readFile(groupPath, 'utf8').catch(() => '');
  if (!/^root:/m.test(passwd)) await appendLine(passwdPath, passwd, 'root:x:0:0:root:/root:/bin/sh');
  if (!/^root:/m.test(group)) await appendLine(groupPath, group, 'root:x:0:');
  const users = parseEntries(await readFile(passwdPath, 'utf8'));
  if (users.some((entry) => entry[0] === DEFAULT_USER)) return;
  const groups = parseEntries(await readFile(groupPath, 'utf8'));

  const usedUids = new Set(users.map((entry) => Number(entry[2])));
  const usedGids = new Set(groups.map((entry) => Number(entry[2])));
  let uid = DEFAULT_UID;
  while (usedUids.has(uid)) uid++;
  const existingGroup = groups.find((entry) => entry[0] === DEFAULT_USER);
  let gid = existingGroup ? Number(existingGroup[2]) : uid;
  while (!existingGroup && usedGids.has(gid)) gid++;
  const shell = (await exists(await resolveInRoot(rootfs, '/bin/bash'))) ? '/bin/bash' : '/bin/sh';

  await appendLine(passwdPath, await readFile(passwdPath, 'utf8'), `${DEFAULT_USER}:x:${uid}:${gid}::/home/${DEFAULT_USER}:${shell}`);
  if (!existingGroup) await appendLine(groupPath, await readFile(groupPath, 'utf8'), `${DEFAULT_USER}:x:${gid}:`);
  const shadowPath = await resolveInRoot(rootfs, '/etc/shadow');
  if (await exists(shadowPath)) {
    const days = Math.floor(Date.now() / 86_400_000);
    await appendLine(shadowPath, await readFile(shadowPath, 'utf8'), `${DEFAULT_USER}:!:${days}:0:99999:7:::`);
  }
  const gshadowPath = await resolveInRoot(rootfs, '/etc/gshadow');
  if (!existingGroup && (await exists(gshadowPath))) {
    await appendLine(gshadowPath, await readFile(gshadowPath, 'utf8'), `${DEFAULT_USER}:!::`);
  }

  const home = await resolveInRoot(rootfs, `/home/${DEFAULT_USER}`);
  if (!(await exists(home))) {
    await mkdir(dirname(home), { recursive: true, mode: 0o755 });
    await mkdir(home, { mode: 0o750 });
    const skel = await resolveInRoot(rootfs, '/etc/skel');
    if (await exists(skel)) await runTool('cp', ['-a', '--', `${skel}/.`, home], { signal });
    await runTool('chown', ['-R', '-P', `${uid}:${gid}`, home], { signal });
    await chmod(home, 0o750);
  }

  let sudo = '';
  if ((await exists(await resolveInRoot(rootfs, '/usr/bin/sudo'))) || (await exists(await resolveInRoot(rootfs, '/bin/sudo')))) {
    const sudoersDir = await resolveInRoot(rootfs, '/etc/sudoers.d');
    await mkdir(sudoersDir, { recursive: true, mode: 0o755 });
    const file = join(sudoersDir, DEFAULT_USER);
    await writeFile(file, `${DEFAULT_USER} ALL=(ALL) NOPASSWD:ALL\n`, { mode: 0o440 });
    await chown(file, 0, 0);
    sudo = ', passwordless sudo';
  }
  log(`created user ${DEFAULT_USER} (uid ${uid}, gid ${gid}, home /home/${DEFAULT_USER}, shell ${shell}${sudo})`);
}

function parseEntries(text: string): string[][] {
  return text
    .split('\n')
    .filter((line) => line.trim() && !line.startsWith('#'))
    .map((line) => line.split(':'));
}

async function appendLine(path: string, current: string, line: string): Promise<void> {
  const separator = current.length > 0 && !current.endsWith('\n') ? '\n' : '';
  if (!(await exists(path))) {
    await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    await writeFile(path, '', { mode: path.endsWith('shadow') ? 0o640 : 0o644 });
  }
  await appendFile(path, `${separator}${line}\n`);
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
