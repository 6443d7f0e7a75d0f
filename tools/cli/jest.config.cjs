// Unit specs next to the code, and the CLI run as a process against a scripted stand-in for E2B's template API
// (the built bin: the test builds tools/cli first).
module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'cli',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
  testTimeout: 60_000,
};
