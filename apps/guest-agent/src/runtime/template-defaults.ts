import { readFileSync } from 'node:fs';
import type { AgentState } from './agent-state';

/** Where a built template records what its sandboxes start with (written by the host's template build). */
export const TEMPLATE_DEFAULTS_PATH = '/etc/kiln/template.json';

/** A template's ENV, WORKDIR and USER: the defaults of every command and file operation in its sandboxes. */
export interface TemplateDefaults {
  envs: Record<string, string>;
  workdir?: string;
  user?: string;
}

/**
 * Reads the template's defaults. No file (the `base` template, an agent on a host) is no defaults. A file that is
 * unreadable or malformed is reported through `warn` and ignored field by field: the agent must come up whatever a
 * template's rootfs holds, and a wrong default is better than no agent to report it.
 */
export function readTemplateDefaults(path: string, warn: (message: string) => void): TemplateDefaults | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') warn(`${path}: ${(err as Error).message}; no template defaults`);
    return undefined;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    warn(`${path} is not JSON (${(err as Error).message}); no template defaults`);
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    warn(`${path} is not a JSON object; no template defaults`);
    return undefined;
  }
  const raw = parsed as Record<string, unknown>;
  const defaults: TemplateDefaults = { envs: {} };
  if (raw.envs !== undefined) {
    if (typeof raw.envs === 'object' && raw.envs !== null && !Array.isArray(raw.envs)) {
      for (const [key, value] of Object.entries(raw.envs)) {
        if (typeof value === 'string' && key !== '' && !key.includes('=') && !key.includes('\0')) defaults.envs[key] = value;
        else warn(`${path}: env var ${JSON.stringify(key)} ignored (must be a string with a name without '=')`);
      }
    } else {
      warn(`${path}: envs must be an object of strings; ignored`);
    }
  }
  for (const field of ['workdir', 'user'] as const) {
    const value = raw[field];
    if (value === undefined || value === '') continue;
    if (typeof value === 'string' && !value.includes('\0')) defaults[field] = value;
    else warn(`${path}: ${field} must be a string; ignored`);
  }
  return defaults;
}

/** Makes the template's defaults the state a sandbox starts from; /init then adds to them. */
export function applyTemplateDefaults(state: AgentState, defaults: TemplateDefaults | undefined): void {
  if (!defaults) return;
  for (const [key, value] of Object.entries(defaults.envs)) state.envVars.set(key, value);
  if (defaults.user) state.defaultUser = defaults.user;
  if (defaults.workdir) state.defaultWorkdir = defaults.workdir;
}
