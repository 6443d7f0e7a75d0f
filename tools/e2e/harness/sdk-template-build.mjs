// Runs the official e2b SDK's Template.build (or buildInBackground) on a definition module in a process of its own:
// the SDK loads parts of itself with dynamic import(), which Jest's CommonJS sandbox cannot run.
// Usage: node sdk-template-build.mjs <definition.mjs> <name> '<json connection and build options>' [background]
// The module's default export is a function that gets the e2b module and returns an SDK Template (the module may
// live outside the repository, where `import 'e2b'` would not resolve). Prints one JSON line per build log entry ({log}) and a last line
// ({result} or {error: {name, message}}); exits 0 either way unless the runner itself breaks.
import { pathToFileURL } from 'node:url';
import * as e2b from 'e2b';

const { Template } = e2b;

const [, , modulePath, name, optionsJson, mode] = process.argv;
const options = JSON.parse(optionsJson ?? '{}');
const print = (value) => process.stdout.write(`${JSON.stringify(value)}\n`);
try {
  const template = (await import(pathToFileURL(modulePath).href)).default(e2b);
  const started = performance.now();
  const onBuildLogs = (entry) => print({ log: { level: entry.level, message: entry.message, timestamp: entry.timestamp } });
  const info = mode === 'background'
    ? await Template.buildInBackground(template, name, { ...options })
    : await Template.build(template, name, { ...options, onBuildLogs });
  print({ result: { ...info, seconds: (performance.now() - started) / 1000 } });
} catch (error) {
  print({ error: { name: error?.name ?? 'Error', message: String(error?.message ?? error) } });
}
