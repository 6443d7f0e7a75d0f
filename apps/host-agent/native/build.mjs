// Builds the host agent's native addon (original_destination.node, SO_ORIGINAL_DST for the egress proxy) with
// node-gyp, against the running Node's headers (Debian ships them under /usr/include/node, the project's .npmrc
// `nodedir`), never downloaded ones. `build` is incremental; `configure` runs once.
// Run: npx nx run host-agent:build-native   (also part of host-agent:build)
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const nativeDir = dirname(fileURLToPath(import.meta.url));
const nodeGyp = join(nativeDir, '..', '..', '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const nodedir = resolve(dirname(process.execPath), '..');
const gyp = (verb) => execFileSync(process.execPath, [nodeGyp, verb, `--nodedir=${nodedir}`], { cwd: nativeDir, stdio: ['ignore', 'ignore', 'inherit'] });
if (!existsSync(join(nativeDir, 'build', 'Makefile'))) gyp('configure');
gyp('build');
console.log(`host-agent addon built: ${join(nativeDir, 'build', 'Release', 'original_destination.node')}`);
