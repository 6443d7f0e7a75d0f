// The malformed-input fuzz suite: a whole stack of its own (own data dir, slot prefix and CIDR) with one real QEMU
// sandbox, 10,000 fast-check-generated malformed requests against the REST API, the sandbox-traffic listener and envd.
module.exports = {
  ...require('../../jest.preset.cjs'),
  displayName: 'fuzz-e2e',
  rootDir: __dirname,
  testMatch: ['<rootDir>/test/**/*.e2e.spec.ts'],
  // Bounds the whole run (stack start, snapshot, fuzz, settle, teardown); the fuzz itself targets < 10 min.
  testTimeout: 1_500_000,
};
