// Builds the self-contained guest-agent directory that is installed into VM root filesystems:
//   dist/bundle/guest-agent.js                       everything except node-pty, in one file
//   dist/bundle/node_modules/node-pty/{package.json,lib/,build/Release/pty.node}
//   dist/bundle/native/guest_kernel.node             the agent's own addon (native/), built here with node-gyp
// Run: npx nx run guest-agent:bundle   (or node apps/guest-agent/tools/bundle.mjs [--out DIR])
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, rm, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const appRoot = join(dirname(fileURLToPath(import.meta.url)), '..');
// --out lets the test suite build its own copy, so a test run never races an image build reading dist/bundle.
const outFlag = process.argv.indexOf('--out');
const outDir = outFlag === -1 ? join(appRoot, 'dist', 'bundle') : resolve(process.argv[outFlag + 1]);
const require = createRequire(join(appRoot, 'package.json'));
const ptyRoot = dirname(require.resolve('node-pty/package.json'));

// node-gyp builds against the running Node's headers (Debian ships them under /usr/include/node, the same
// `nodedir` as the project's .npmrc), never downloaded ones. `build` is incremental; `configure` runs once.
const nativeDir = join(appRoot, 'native');
const nodeGyp = join(appRoot, '..', '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const nodedir = resolve(dirname(process.execPath), '..');
const gyp = (verb) => execFileSync(process.execPath, [nodeGyp, verb, `--nodedir=${nodedir}`], { cwd: nativeDir, stdio: ['ignore', 'ignore', 'inherit'] });
if (!existsSync(join(nativeDir, 'build', 'Makefile'))) gyp('configure');
gyp('build');

await rm(outDir, { recursive: true, force: true });
await mkdir(outDir, { recursive: true });

await build({
  entryPoints: [join(appRoot, 'src', 'main.ts')],
  outfile: join(outDir, 'guest-agent.js'),
  bundle: true,
  platform: 'node',
  target: 'node20',
  format: 'cjs',
  // Read the libs' TypeScript source (their package.json "development" export), not a possibly stale dist/.
  conditions: ['development'],
  // A native addon cannot be bundled; it is copied next to the bundle below and resolved from node_modules.
  external: ['node-pty'],
  sourcemap: 'linked',
  minify: false,
  legalComments: 'none',
  logLevel: 'warning',
});

const ptyOut = join(outDir, 'node_modules', 'node-pty');
await mkdir(join(ptyOut, 'build', 'Release'), { recursive: true });
await cp(join(ptyRoot, 'lib'), join(ptyOut, 'lib'), {
  recursive: true,
  // Tests and source maps are not needed at run time.
  filter: (src) => !/\.test\.js$|\.map$/.test(src),
});
await cp(join(ptyRoot, 'build', 'Release', 'pty.node'), join(ptyOut, 'build', 'Release', 'pty.node'));
const ptyPackage = JSON.parse(await readFile(join(ptyRoot, 'package.json'), 'utf8'));
const { name, version, main, license } = ptyPackage;
await writeFile(join(ptyOut, 'package.json'), JSON.stringify({ name, version, main, license }, null, 2) + '\n');

await mkdir(join(outDir, 'native'), { recursive: true });
await cp(join(nativeDir, 'build', 'Release', 'guest_kernel.node'), join(outDir, 'native', 'guest_kernel.node'));

console.log(`guest-agent bundle written to ${outDir}`);
