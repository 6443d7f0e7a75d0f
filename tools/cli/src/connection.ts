import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** What the e2b SDK needs to reach Kiln's API, and where each value came from. */
export interface KilnConnection {
  apiKey?: string;
  apiUrl?: string;
  domain?: string;
  /** "environment", the dev.env path, or both: shown when a request fails, so a wrong source is easy to spot. */
  sources: string[];
}

const CONNECTION_VARIABLES = { apiKey: 'E2B_API_KEY', apiUrl: 'E2B_API_URL', domain: 'E2B_DOMAIN' } as const;

/** The dev stack's connection file: `$KILN_STATE/dev.env`, else `<repo>/.kiln/dev.env` (tools/stack/seed-dev.cjs). */
export function devEnvFile(env: Record<string, string | undefined>, repoRoot: string): string {
  return env.KILN_STATE ? join(env.KILN_STATE, 'dev.env') : join(repoRoot, '.kiln', 'dev.env');
}

/** `KEY=value` lines; blank lines, comments and anything else are skipped. Optional quotes around the value go. */
export function parseEnvFile(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const line of text.split(/\r?\n/)) {
    const match = /^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(line);
    if (!match) continue;
    const quoted = /^(["'])(.*)\1$/.exec(match[2]);
    values[match[1]] = quoted ? quoted[2] : match[2];
  }
  return values;
}

/**
 * The SDK's settings as the SDK reads them (E2B_API_KEY, E2B_API_URL, E2B_DOMAIN); each one the environment leaves
 * unset comes from the dev stack's dev.env when that file exists, so `npx kiln …` works right after `npm run up`.
 */
export function resolveConnection(env: Record<string, string | undefined>, devEnvPath: string): KilnConnection {
  const connection: KilnConnection = { sources: [] };
  let fromFile: Record<string, string> | undefined;
  for (const [field, variable] of Object.entries(CONNECTION_VARIABLES) as Array<[keyof typeof CONNECTION_VARIABLES, string]>) {
    const fromEnv = env[variable];
    if (fromEnv) {
      connection[field] = fromEnv;
      if (!connection.sources.includes('environment')) connection.sources.push('environment');
      continue;
    }
    fromFile ??= existsSync(devEnvPath) ? parseEnvFile(readFileSync(devEnvPath, 'utf8')) : {};
    if (fromFile[variable]) {
      connection[field] = fromFile[variable];
      if (!connection.sources.includes(devEnvPath)) connection.sources.push(devEnvPath);
    }
  }
  return connection;
}
