// Builds the bundle once before the suites run, with the same recipe as the shipping one (tools/bundle.mjs), so the
// tests exercise exactly what goes into the VM image. It goes to dist/test-bundle: a test run must not replace
// dist/bundle while an image build may be copying it.
const { execFileSync } = require('node:child_process');
const { join } = require('node:path');

module.exports = async () => {
  const out = join(__dirname, '..', '..', 'dist', 'test-bundle');
  execFileSync(process.execPath, [join(__dirname, '..', '..', 'tools', 'bundle.mjs'), '--out', out], { stdio: 'inherit' });
};
