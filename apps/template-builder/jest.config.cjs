module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'template-builder',
  rootDir: __dirname,
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.spec.ts'],
};
