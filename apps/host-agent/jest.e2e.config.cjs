// Slow end-to-end tests that boot real QEMU VMs (test/vm). They need root, the `base` guest
// image (npx nx run guest-image:build) and a few cores; run with npx nx run host-agent:e2e.
module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'host-agent-vm',
  rootDir: __dirname,
  testMatch: ['<rootDir>/test/vm/**/*.spec.ts'],
  testTimeout: 240_000,
  // VMs under TCG saturate the CPUs; parallel files would only make each one time out.
  maxWorkers: 1,
};
