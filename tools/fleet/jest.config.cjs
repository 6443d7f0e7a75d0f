// The fleet acceptance suite: a stack of its own with three host agents, each in a network namespace of its own
// (so cutting its link is a partition), two scheduler replicas and the host monitor; real QEMU VMs.
module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'fleet-e2e',
  rootDir: __dirname,
  testMatch: ['<rootDir>/test/**/*.e2e.spec.ts'],
  testTimeout: 600_000,
};
