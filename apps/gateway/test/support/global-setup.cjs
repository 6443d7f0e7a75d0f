// The SDK suite drives a real guest agent. It builds its own copy of the agent bundle (same
// recipe as the shipping one) instead of sharing guest-agent's test bundle, which that
// project's own setup may be rewriting at the same moment when suites run in parallel.
const { execFileSync } = require('node:child_process');
const { join } = require('node:path');

module.exports = async () => {
  const out = join(__dirname, '..', '..', 'dist', 'guest-agent-test-bundle');
  execFileSync(process.execPath, [join(__dirname, '..', '..', '..', 'guest-agent', 'tools', 'bundle.mjs'), '--out', out], { stdio: 'inherit' });
  process.env.KILN_GUEST_AGENT_BUNDLE = join(out, 'guest-agent.js');
};
