// End-to-end suites: the whole stack (five apps, a private NATS, a fresh database) with
// real QEMU VMs, started once for all files by the global setup.
module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'stack-e2e',
  rootDir: __dirname,
  testMatch: ['<rootDir>/test/**/*.e2e.spec.ts'],
  globalSetup: '<rootDir>/harness/global-setup.ts',
  globalTeardown: '<rootDir>/harness/global-teardown.ts',
  testTimeout: 180_000,
};
