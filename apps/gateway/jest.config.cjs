module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'gateway',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
  // The e2b SDK requires its own ESM-only chalk 5, which Jest on Node 20 cannot require(); the SDK only colours
  // template-build logs with it, so the workspace's CommonJS chalk 4 (same API) stands in (as in guest-agent).
  moduleNameMapper: { '^chalk$': require.resolve('chalk') },
};
