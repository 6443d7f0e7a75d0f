import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runHostCommand } from '../host-command/host-command';
import { UserStepError } from './template-build.errors';
import type { ParentDisk } from './layer-store';

/** Free space a template's disk gets beyond its content when the request names no size. */
const HEADROOM_MIB = 1024;
const MIB = 1024 * 1024;
/** Long enough for a few GiB on a slow disk (convert, fsck and resize each read the whole image). */
const IMAGE_COMMAND_TIMEOUT_MS = 20 * 60_000;

/** Paths debugfs is given: its command parser splits on blanks and knows no escapes. */
const DEBUGFS_SAFE_PATH = /^\/[A-Za-z0-9._@+/-]*$/;

/**
 * Turns the top of a layer chain into a template's rootfs: one raw ext4 image with `/etc/kiln/template.json` in it,
 * the final WORKDIR present, shrunk to its content and grown to the requested size (or content plus headroom).
 * The image is only ever handled as a file (qemu-img, e2fsck, debugfs, resize2fs): an untrusted filesystem is never
 * mounted on the host, and e2fsck runs before any tool that trusts its structures.
 */
export async function flattenRootfs(
  top: ParentDisk,
  target: string,
  options: { step: number; diskMib: number; templateJson: string; user: string; workdir?: { path: string; owner: string }; scratch: string; log: (line: string) => void },
): Promise<{ diskMib: number; contentMib: number }> {
  await runHostCommand('qemu-img', ['convert', '-q', '-f', top.format, '-O', 'raw', top.path, target], { timeoutMs: IMAGE_COMMAND_TIMEOUT_MS });
  await fsck(target);
  // The guest agent runs every command of the template's sandboxes as this user: one the image lacks is a dead template.
  if (!(await passwdEntry(target, options.user))) {
    throw new UserStepError(options.step, `step ${options.step}: USER ${options.user} does not exist in the image (no /etc/passwd entry)`);
  }
  const defaults = join(options.scratch, 'template-defaults.json');
  await writeFile(defaults, options.templateJson, { mode: 0o644 });
  const commands = ['mkdir /etc/kiln', 'rm /etc/kiln/template.json', `write ${defaults} /etc/kiln/template.json`];
  commands.push('sif /etc/kiln/template.json uid 0', 'sif /etc/kiln/template.json gid 0', 'sif /etc/kiln/template.json mode 0100644');
  if (options.workdir && !(await exists(target, options.workdir.path))) {
    if (!DEBUGFS_SAFE_PATH.test(options.workdir.path)) {
      throw new UserStepError(options.step, `step ${options.step}: WORKDIR ${JSON.stringify(options.workdir.path)} was never created by a RUN or COPY and has characters the image tools cannot create`);
    }
    const owner = await lookupOwner(target, options.workdir.owner);
    let path = '';
    for (const part of options.workdir.path.split('/').filter(Boolean)) {
      path += `/${part}`;
      if (await exists(target, path)) continue;
      commands.push(`mkdir ${path}`, `sif ${path} uid ${owner.uid}`, `sif ${path} gid ${owner.gid}`, `sif ${path} mode 040755`);
    }
    options.log(`created WORKDIR ${options.workdir.path} (owner ${options.workdir.owner})`);
  }
  await debugfs(target, commands, options.scratch);
  // resize2fs insists on a freshly checked filesystem.
  await fsck(target);
  await runHostCommand('resize2fs', ['-M', target], { timeoutMs: IMAGE_COMMAND_TIMEOUT_MS });
  const shrunk = await filesystemBytes(target);
  const contentMib = Math.ceil(shrunk / MIB);
  let diskMib = options.diskMib;
  if (diskMib > 0 && diskMib < contentMib) {
    throw new UserStepError(options.step, `step ${options.step}: disk size ${diskMib} MiB is smaller than the template's content (${contentMib} MiB)`);
  }
  if (diskMib === 0) diskMib = contentMib + HEADROOM_MIB;
  await runHostCommand('truncate', ['-s', `${diskMib}M`, target]);
  await runHostCommand('resize2fs', [target], { timeoutMs: IMAGE_COMMAND_TIMEOUT_MS });
  return { diskMib, contentMib };
}

/** e2fsck -fy: 1 and 2 mean errors were fixed, which is what it is there for; 4 and up is an unusable image. */
async function fsck(image: string): Promise<void> {
  await runHostCommand('e2fsck', ['-fy', image], { timeoutMs: IMAGE_COMMAND_TIMEOUT_MS, acceptExitCodes: [1, 2] });
}

async function debugfs(image: string, commands: string[], scratch: string): Promise<void> {
  const script = join(scratch, 'debugfs.cmds');
  await writeFile(script, `${commands.join('\n')}\n`);
  // Commands that fail (mkdir of an existing dir, rm of a missing file) only print; the checks around this matter.
  await runHostCommand('debugfs', ['-w', '-f', script, image], { timeoutMs: IMAGE_COMMAND_TIMEOUT_MS });
}

async function exists(image: string, path: string): Promise<boolean> {
  if (!DEBUGFS_SAFE_PATH.test(path)) return false;
  const result = await runHostCommand('debugfs', ['-R', `stat ${path}`, image], { timeoutMs: 60_000 });
  return !/File not found|not found by ext2_lookup/i.test(result.stderr + result.stdout) && /Inode:/.test(result.stdout);
}

/** uid and gid of a user name (or a numeric uid) from the image's /etc/passwd. */
async function lookupOwner(image: string, user: string): Promise<{ uid: number; gid: number }> {
  if (/^\d+$/.test(user)) return { uid: Number(user), gid: Number(user) };
  const entry = await passwdEntry(image, user);
  return entry ? { uid: entry.uid, gid: entry.gid } : { uid: 0, gid: 0 };
}

/** The /etc/passwd entry of a user name, or of a numeric uid, in a raw ext4 image (read with debugfs, never mounted). */
export async function passwdEntry(image: string, user: string): Promise<{ name: string; uid: number; gid: number } | undefined> {
  const passwd = await runHostCommand('debugfs', ['-R', 'cat /etc/passwd', image], { timeoutMs: 60_000 });
  const numeric = /^\d+$/.test(user);
  for (const line of passwd.stdout.split('\n')) {
    const fields = line.split(':');
    if (fields.length < 4) continue;
    if (numeric ? fields[2] === user : fields[0] === user) return { name: fields[0], uid: Number(fields[2]), gid: Number(fields[3]) };
  }
  return undefined;
}

/** Size of the filesystem in the image (block count × block size). */
async function filesystemBytes(image: string): Promise<number> {
  const { stdout } = await runHostCommand('dumpe2fs', ['-h', image], { timeoutMs: 60_000 });
  const blocks = Number(/^Block count:\s+(\d+)/m.exec(stdout)?.[1]);
  const size = Number(/^Block size:\s+(\d+)/m.exec(stdout)?.[1]);
  if (!blocks || !size) throw new Error(`dumpe2fs ${image}: no block count or size`);
  return blocks * size;
}
