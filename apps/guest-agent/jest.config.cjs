module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'guest-agent',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
  // The e2b SDK (CommonJS) requires its own chalk 5, which is ESM-only and cannot be require()d inside Jest on
  // Node 20. The SDK only colours template-build log prefixes with it, so the workspace's CommonJS chalk 4 (same
  // API) stands in. Outside Jest, Node 20.19+ loads chalk 5 itself.
  moduleNameMapper: { '^chalk$': require.resolve('chalk') },
  globalSetup: '<rootDir>/test/support/global-setup.cjs',
  testTimeout: 30_000,
};
