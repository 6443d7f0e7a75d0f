import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { devEnvFile, parseEnvFile, resolveConnection } from './connection';

describe('connection settings', () => {
  let dir: string;
  let file: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'kiln-cli-connection-'));
    file = join(dir, 'dev.env');
    writeFileSync(file, ['# written by npm run up', 'E2B_API_URL=http://localhost:3000', 'E2B_API_KEY="e2b_devkey"', 'E2B_DOMAIN=kiln.localhost', 'junk line', ''].join('\n'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads KEY=value lines, unquoting values', () => {
    expect(parseEnvFile("A=1\nexport B='two words'\n# C=3\n\nnot a line")).toEqual({ A: '1', B: 'two words' });
  });

  it('takes the dev stack file when the environment sets nothing', () => {
    expect(resolveConnection({}, file)).toEqual({ apiKey: 'e2b_devkey', apiUrl: 'http://localhost:3000', domain: 'kiln.localhost', sources: [file] });
  });

  it('lets the environment win, value by value', () => {
    expect(resolveConnection({ E2B_API_KEY: 'e2b_mine' }, file)).toEqual({
      apiKey: 'e2b_mine',
      apiUrl: 'http://localhost:3000',
      domain: 'kiln.localhost',
      sources: ['environment', file],
    });
    const allFromEnv = { E2B_API_KEY: 'k', E2B_API_URL: 'http://api', E2B_DOMAIN: 'd' };
    expect(resolveConnection(allFromEnv, file)).toEqual({ apiKey: 'k', apiUrl: 'http://api', domain: 'd', sources: ['environment'] });
  });

  it('works without the file', () => {
    expect(resolveConnection({}, join(dir, 'missing.env'))).toEqual({ sources: [] });
  });

  it('finds the file under KILN_STATE, else under the repository', () => {
    expect(devEnvFile({ KILN_STATE: '/state' }, '/repo')).toBe('/state/dev.env');
    expect(devEnvFile({}, '/repo')).toBe('/repo/.kiln/dev.env');
  });
});
