#!/usr/bin/env node
// The `kiln` bin (root package.json "bin"): runs the CLI that the repo's build compiles to tools/cli/dist.
'use strict';
const { existsSync } = require('node:fs');
const { join } = require('node:path');

const entry = join(__dirname, '..', 'dist', 'main.js');
if (!existsSync(entry)) {
  process.stderr.write('kiln: the CLI is not built yet: run `npm run build` (or `npx tsc -b tools/cli/tsconfig.json`)\n');
  process.exit(2);
}
require(entry).runFromCommandLine();
