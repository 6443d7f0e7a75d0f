// The fault battery: a whole stack of its own (own data dir, slot prefix and CIDR) on private, restartable
// Postgres, Redis and NATS, so that killing them harms nothing else; real QEMU VMs.
module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'faults-e2e',
  rootDir: __dirname,
  testMatch: ['<rootDir>/test/**/*.e2e.spec.ts'],
  testTimeout: 600_000,
};
