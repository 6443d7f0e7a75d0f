// Shared jest settings: swc for speed, and the "development" export condition so
// tests read each lib's TypeScript source rather than a possibly stale dist/.
module.exports = {
  testEnvironment: 'node',
  transform: {
    '^.+\\.(t|j)s$': [
      '@swc/jest',
      {
        jsc: {
          parser: { syntax: 'typescript', decorators: true },
          transform: { legacyDecorator: true, decoratorMetadata: true },
          target: 'es2022',
        },
        module: { type: 'commonjs' },
      },
    ],
  },
  moduleFileExtensions: ['ts', 'js', 'json'],
  testEnvironmentOptions: { customExportConditions: ['development', 'node', 'require', 'default'] },
  testPathIgnorePatterns: ['/node_modules/', '/dist/'],
  // The e2b SDK (CommonJS) requires chalk 5, which is ESM-only and cannot be require()d inside
  // Jest on Node 20; the SDK only colours log prefixes with it, so chalk 4 (same API) stands in.
  moduleNameMapper: { '^chalk$': require.resolve('chalk') },
};
