module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'artifacts',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
};
