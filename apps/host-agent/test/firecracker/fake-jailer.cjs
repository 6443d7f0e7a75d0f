#!/usr/bin/env node
'use strict';
/**
 * A RECORDING FAKE of Firecracker's jailer (no jailer binary on this machine). Parses and checks its command line as
 * docs/jailer.md of v1.16.1 describes it (required --id/--exec-file/--uid/--gid, id of letters, digits and hyphens
 * up to 64, absolute existing paths, numeric ids, cgroup settings as <file>=<value>, Firecracker's own arguments
 * after `--`), records it, prepares <chroot base>/<exec file name>/<id>/root, and then "execs" the exec file: the
 * fake Firecracker runs in this same process, so the pid the driver spawned is the VMM's, as with the real jailer
 * (no --daemonize, no --new-pid-ns). It does not chroot, setuid or join the netns: it records what it was asked to
 * do. Per-VM behaviour comes from <chroot base>/fake-control.json ({ "<id>": { failAt, noSocket, exitEarly,
 * diffWrites } }: see fake-firecracker.cjs); records go to <chroot base>/records/<id>.jsonl.
 *
 * Given --cgroup settings it DOES create the VM's cgroup on this host's real cgroup filesystem, as v1.16.1's
 * src/jailer/src/cgroup.rs does before it chroots (--cgroup-version defaults to 1, --parent-cgroup to the exec file's
 * name and must be relative without . or ..):
 *   v1: each setting's controller is its file name up to the first '.'; the group is <the first cgroup (v1) mount in
 *       /proc/mounts whose options name that controller>/<parent>/<id>, made with mkdir -p; each file first inherits
 *       its parent group's value (inherit_from_parent), then gets the setting's value; then the pid goes in.
 *   v2: the group is <the first cgroup2 mount in /proc/mounts>/<parent>/<id>; a controller not in the mount's
 *       cgroup.controllers is refused; each controller is enabled (+controller in cgroup.subtree_control) from the
 *       mount down to the parent, as write_all_subtree_control does; the files are written; then the pid goes in.
 * The real v1 jailer writes its pid to `tasks`, which moves one thread: it is single-threaded then. This fake is a
 * node process with a dozen threads, so it writes cgroup.procs (all of them), which ends where the real one does.
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
if (options['parent-cgroup'] !== undefined) {
  // env.rs: CgroupInvalidParentPath for a RootDir, CurDir or ParentDir component.
  const parent = options['parent-cgroup'];
  if (path.isAbsolute(parent) || parent.split('/').some((part) => part === '.' || part === '..')) {
    refuse(`invalid --parent-cgroup ${parent}: a relative path without . or ..`);
  }
}
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
let cgroupDirs = [];
if (options.cgroup.length > 0) {
  try {
    cgroupDirs = createCgroup(options['cgroup-version'] ?? '1', options['parent-cgroup'] ?? execName, options.id, options.cgroup);
  } catch (error) {
    refuse(`cgroup setup failed: ${error.message}`);
  }
}
fs.appendFileSync(recordPath, `${JSON.stringify({ who: 'jailer', argv, options, pid: process.pid, jailDir, cgroupDirs })}\n`);

// The real jailer execs <chroot>/<exec file name> with --id and its timing arguments before the forwarded ones.
const firecrackerArgs = [`--id=${options.id}`, '--start-time-us=0', '--start-time-cpu-us=0', ...forwarded];
const { runFakeFirecracker } = require(options['exec-file']);
runFakeFirecracker(firecrackerArgs, { rootDir, recordPath, control });

/** Creates the VM's group in each hierarchy, writes the settings and moves this process in; returns the group dirs. */
function createCgroup(version, parent, id, settings) {
  const mounts = fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((line) => line.split(' '))
    .filter((fields) => fields.length >= 4);
  const properties = settings.map((setting) => {
    const [file, value] = setting.split('=');
    return { file, value, controller: file.split('.')[0] };
  });
  const groups = new Map(); // group dir -> its properties
  if (version === '1') {
    for (const property of properties) {
      const mount = mounts.find(([, , type, opts]) => type === 'cgroup' && opts.split(',').includes(property.controller));
      if (!mount) throw new Error(`controller ${property.controller} is not mounted (CgroupControllerUnavailable)`);
      const dir = path.join(mount[1], parent, id);
      groups.set(dir, [...(groups.get(dir) ?? []), property]);
    }
    const depth = parent.split('/').filter(Boolean).length;
    for (const [dir, list] of groups) {
      fs.mkdirSync(dir, { recursive: true });
      for (const { file, value } of list) {
        inheritFromParent(dir, file, depth);
        fs.writeFileSync(path.join(dir, file), `${value}\n`);
      }
    }
  } else {
    const mount = mounts.find(([, , type]) => type === 'cgroup2');
    if (!mount) throw new Error('no cgroup2 mount (CgroupHierarchyMissing)');
    const available = fs.readFileSync(path.join(mount[1], 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
    for (const { controller } of properties) if (!available.includes(controller)) throw new Error(`controller ${controller} is not available (CgroupControllerUnavailable)`);
    const dir = path.join(mount[1], parent, id);
    groups.set(dir, properties);
    fs.mkdirSync(dir, { recursive: true });
    const enabled = new Set();
    for (const { file, value, controller } of properties) {
      if (!enabled.has(controller)) {
        enableAlongPath(path.dirname(dir), controller);
        enabled.add(controller);
      }
      fs.writeFileSync(path.join(dir, file), `${value}\n`);
    }
  }
  // All groups are written before the pid goes into any (setup_cgroup_conf's two passes).
  for (const dir of groups.keys()) fs.writeFileSync(path.join(dir, 'cgroup.procs'), `${process.pid}\n`);
  return [...groups.keys()];
}

/** inherit_from_parent: the parent group's value of `file` (its own parent's first when empty, up to `depth` levels). */
function inheritFromParent(dir, file, depth) {
  const parentFile = path.join(path.dirname(dir), file);
  let line = fs.readFileSync(parentFile, 'utf8').split('\n')[0];
  if (line === '' && depth > 0) {
    try {
      inheritFromParent(path.dirname(dir), file, depth - 1);
    } catch {
      /* another jailer may have filled it meanwhile: checked below */
    }
    line = fs.readFileSync(parentFile, 'utf8').split('\n')[0];
  }
  if (line === '') throw new Error(`cannot inherit ${file} for ${dir} (CgroupInheritFromParent)`);
  fs.writeFileSync(path.join(dir, file), `${line}\n`);
}

/** write_all_subtree_control: +controller in every cgroup.subtree_control from the top down to `dir`. */
function enableAlongPath(dir, controller) {
  const file = path.join(dir, 'cgroup.subtree_control');
  if (!fs.existsSync(file)) return;
  const parentDir = path.dirname(dir);
  if (parentDir !== dir) enableAlongPath(parentDir, controller);
  fs.writeFileSync(file, `+${controller}\n`);
}
