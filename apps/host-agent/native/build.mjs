// Builds the host agent's native addons (original_destination.node: SO_ORIGINAL_DST for the egress proxy;
// data_extents.node: SEEK_DATA/SEEK_HOLE for Firecracker's sparse Diff snapshots) with
// node-gyp, against the running Node's headers (Debian ships them under /usr/include/node, the project's .npmrc
// `nodedir`), never downloaded ones. `build` is incremental; `configure` runs once
// (and again after binding.gyp changes).
// Run: npx nx run host-agent:build-native   (also part of host-agent:build)
import { execFileSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = dirname(fileURLToPath(import.meta.url));
const nodeGyp = join(nativeDir, '..', '..', '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const nodedir = resolve(dirname(process.execPath), '..');
const gyp = (verb) => execFileSync(process.execPath, [nodeGyp, verb, `--nodedir=${nodedir}`], { cwd: nativeDir, stdio: ['ignore', 'ignore', 'inherit'] });
const makefile = join(nativeDir, 'build', 'Makefile');
// Configure again when binding.gyp changed since (a new target is not in the old Makefile).
if (!existsSync(makefile) || statSync(join(nativeDir, 'binding.gyp')).mtimeMs > statSync(makefile).mtimeMs) gyp('configure');
gyp('build');
for (const addon of ['original_destination.node', 'data_extents.node']) {
  console.log(`host-agent addon built: ${join(nativeDir, 'build', 'Release', addon)}`);
}
