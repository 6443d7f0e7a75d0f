import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { applyInit } from '../http/init-route';
import { AgentState } from './agent-state';
import { applyTemplateDefaults, readTemplateDefaults } from './template-defaults';

const noMachine = {
  clock: { syncTo: () => undefined },
  entropy: { reseed: () => undefined },
  resolver: { apply: async () => false },
} as unknown as Parameters<typeof applyInit>[3];

describe('template defaults (/etc/kiln/template.json)', () => {
  let dir: string;
  let warnings: string[];
  const warn = (message: string) => warnings.push(message);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'kiln-template-defaults-'));
    warnings = [];
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('has none without the file (the base template), and says nothing about it', () => {
    expect(readTemplateDefaults(join(dir, 'missing.json'), warn)).toBeUndefined();
    expect(warnings).toEqual([]);
  });

  it("makes the template's envs, workdir and user the state every request starts from; /init adds to them", async () => {
    const path = join(dir, 'template.json');
    await writeFile(path, JSON.stringify({ envs: { GREETING: 'hi', PATH_EXTRA: '/opt/x' }, workdir: '/srv', user: 'root', startCmd: 'ignored' }));
    const state = new AgentState();
    applyTemplateDefaults(state, readTemplateDefaults(path, warn));
    expect(Object.fromEntries(state.envVars)).toEqual({ GREETING: 'hi', PATH_EXTRA: '/opt/x' });
    expect(state.defaultWorkdir).toBe('/srv');
    expect(state.defaultUser).toBe('root');

    // A create's /init: its env vars join (and win over) the template's; the token set and then cleared (the
    // template warm-up) leaves the template's defaults in place.
    await applyInit({ envVars: { GREETING: 'hello', FROM_CREATE: '1' }, accessToken: 'tok' }, undefined, state, noMachine);
    await applyInit({ accessToken: '' }, 'tok', state, noMachine);
    expect(Object.fromEntries(state.envVars)).toEqual({ GREETING: 'hello', PATH_EXTRA: '/opt/x', FROM_CREATE: '1' });
    expect(state.defaultWorkdir).toBe('/srv');
    expect(state.defaultUser).toBe('root');
    expect(warnings).toEqual([]);
  });

  it('ignores what is malformed, field by field, and reports it', async () => {
    const path = join(dir, 'template.json');
    await writeFile(path, JSON.stringify({ envs: { OK: 'yes', BAD: 3, 'A=B': 'x' }, workdir: 7, user: 'user' }));
    const defaults = readTemplateDefaults(path, warn);
    expect(defaults).toEqual({ envs: { OK: 'yes' }, user: 'user' });
    expect(warnings).toHaveLength(3);

    await writeFile(path, 'not json');
    expect(readTemplateDefaults(path, warn)).toBeUndefined();
    await writeFile(path, '[1,2]');
    expect(readTemplateDefaults(path, warn)).toBeUndefined();
    expect(warnings).toHaveLength(5);
  });

  it('leaves the state alone when there are no defaults', () => {
    const state = new AgentState();
    applyTemplateDefaults(state, undefined);
    expect(state.envVars.size).toBe(0);
    expect(state.defaultUser).toBe('user');
    expect(state.defaultWorkdir).toBeUndefined();
  });
});
