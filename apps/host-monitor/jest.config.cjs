module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'host-monitor',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
};
