#!/usr/bin/env node
'use strict';
/**
 * A RECORDING FAKE of Firecracker's jailer (no jailer binary on this machine). Parses and checks its command line as
 * docs/jailer.md of v1.16.1 describes it (required --id/--exec-file/--uid/--gid, id of letters, digits and hyphens
 * up to 64, absolute existing paths, numeric ids, cgroup settings as <file>=<value>, Firecracker's own arguments
 * after `--`), records it, prepares <chroot base>/<exec file name>/<id>/root, and then "execs" the exec file: the
 * fake Firecracker runs in this same process, so the pid the driver spawned is the VMM's, as with the real jailer
 * (no --daemonize, no --new-pid-ns). It does not chroot, setuid, join the netns or create cgroups: it records what
 * it was asked to do. Per-VM behaviour comes from <chroot base>/fake-control.json ({ "<id>": { failAt, noSocket,
 * exitEarly, diffWrites } }: see fake-firecracker.cjs); records go to <chroot base>/records/<id>.jsonl.
 */
const fs = require('node:fs');
const path = require('node:path');

function refuse(message) {
  process.stderr.write(`jailer: ${message}\n`);
  process.exit(1);
}

const argv = process.argv.slice(2);
const dashDash = argv.indexOf('--');
const own = dashDash < 0 ? argv : argv.slice(0, dashDash);
const forwarded = dashDash < 0 ? [] : argv.slice(dashDash + 1);
const single = new Set(['--id', '--exec-file', '--uid', '--gid', '--chroot-base-dir', '--netns', '--cgroup-version', '--parent-cgroup']);
const repeated = new Set(['--cgroup', '--resource-limit']);
const flags = new Set(['--daemonize', '--new-pid-ns']);
const options = { cgroup: [], 'resource-limit': [] };
for (let i = 0; i < own.length; i++) {
  const arg = own[i];
  if (flags.has(arg)) {
    options[arg.slice(2)] = true;
    continue;
  }
  if (!single.has(arg) && !repeated.has(arg)) refuse(`unknown argument ${arg}`);
  const value = own[++i];
  if (value === undefined || value.startsWith('--')) refuse(`${arg} needs a value`);
  if (repeated.has(arg)) options[arg.slice(2)].push(value);
  else if (options[arg.slice(2)] !== undefined) refuse(`${arg} given twice`);
  else options[arg.slice(2)] = value;
}
for (const required of ['id', 'exec-file', 'uid', 'gid']) if (options[required] === undefined) refuse(`--${required} is required`);
if (!/^[A-Za-z0-9-]{1,64}$/.test(options.id)) refuse(`invalid --id ${options.id}: letters, digits and hyphens, 1-64 characters`);
for (const id of ['uid', 'gid']) if (!/^\d+$/.test(options[id])) refuse(`--${id} must be a number`);
const chrootBase = options['chroot-base-dir'] ?? '/srv/jailer';
for (const name of ['exec-file', 'chroot-base-dir', 'netns']) {
  const value = name === 'chroot-base-dir' ? chrootBase : options[name];
  if (value === undefined) continue;
  if (!path.isAbsolute(value)) refuse(`--${name} must be an absolute path`);
  if (!fs.existsSync(value)) refuse(`--${name} ${value} does not exist`);
}
if (options['cgroup-version'] !== undefined && !['1', '2'].includes(options['cgroup-version'])) refuse('--cgroup-version must be 1 or 2');
for (const setting of options.cgroup) if (!/^[a-z_]+\.[a-z_.]+=.+$/.test(setting)) refuse(`invalid --cgroup ${setting}`);
if (options.daemonize || options['new-pid-ns']) refuse('the fake runs Firecracker in place: --daemonize/--new-pid-ns would change the pid');

const execName = path.basename(options['exec-file']);
const jailDir = path.join(chrootBase, execName, options.id);
const rootDir = path.join(jailDir, 'root');
fs.mkdirSync(rootDir, { recursive: true });
const recordDir = path.join(chrootBase, 'records');
fs.mkdirSync(recordDir, { recursive: true });
const recordPath = path.join(recordDir, `${options.id}.jsonl`);
let control = {};
try {
  control = JSON.parse(fs.readFileSync(path.join(chrootBase, 'fake-control.json'), 'utf8'))[options.id] ?? {};
} catch {
  control = {};
}
fs.appendFileSync(recordPath, `${JSON.stringify({ who: 'jailer', argv, options, pid: process.pid, jailDir })}\n`);

// The real jailer execs <chroot>/<exec file name> with --id and its timing arguments before the forwarded ones.
const firecrackerArgs = [`--id=${options.id}`, '--start-time-us=0', '--start-time-cpu-us=0', ...forwarded];
const { runFakeFirecracker } = require(options['exec-file']);
runFakeFirecracker(firecrackerArgs, { rootDir, recordPath, control });
