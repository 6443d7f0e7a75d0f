// Builds the shipping bundle once before the suites run: the tests exercise exactly what goes into the VM image.
const { execFileSync } = require('node:child_process');
const { join } = require('node:path');

module.exports = async () => {
  execFileSync(process.execPath, [join(__dirname, '..', '..', 'tools', 'bundle.mjs')], { stdio: 'inherit' });
};
