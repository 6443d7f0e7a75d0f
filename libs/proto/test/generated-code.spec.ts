import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';

const LIB = join(__dirname, '..');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : [path];
  });
}

/** Generation is an Nx target run offline with npm-registry tools; committed output must be exactly what it produces. */
describe('generated protobuf code', () => {
  it('is reproducible: regenerating from proto/ gives the committed bytes', () => {
    const out = mkdtempSync(join(tmpdir(), 'kiln-proto-'));
    try {
      execFileSync('bash', [join(LIB, 'tools', 'generate.sh'), out], { stdio: 'pipe' });
      const committed = files(join(LIB, 'src', 'gen')).map((f) => relative(join(LIB, 'src', 'gen'), f)).sort();
      const regenerated = files(out).map((f) => relative(out, f)).sort();
      expect(regenerated).toEqual(committed);
      for (const file of committed) {
        expect(readFileSync(join(out, file), 'utf8')).toBe(readFileSync(join(LIB, 'src', 'gen', file), 'utf8'));
      }
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 60_000);

  it('keeps the envd wire names E2B’s SDK uses', async () => {
    const { Process } = await import('@kiln/proto/process');
    const { Filesystem } = await import('@kiln/proto/filesystem');
    expect(Process.typeName).toBe('process.Process');
    expect(Object.keys(Process.method).sort()).toEqual(['closeStdin', 'connect', 'list', 'sendInput', 'sendSignal', 'start', 'streamInput', 'update']);
    expect(Filesystem.typeName).toBe('filesystem.Filesystem');
    expect(Object.keys(Filesystem.method)).toHaveLength(9);
  });
});
