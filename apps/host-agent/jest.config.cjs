module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'host-agent',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
  // Real-VM tests are slow and need the guest image: they run under the e2e target (jest.e2e.config.cjs).
  testPathIgnorePatterns: ['/node_modules/', '/dist/', '<rootDir>/test/vm/'],
};
