module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'guest-agent',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
  globalSetup: '<rootDir>/test/support/global-setup.cjs',
  testTimeout: 30_000,
};
