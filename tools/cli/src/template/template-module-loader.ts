import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { build } from 'esbuild';
import { Template, type TemplateClass } from 'e2b';
import { TemplateFileError } from '../cli.errors';

export const TEMPLATE_MODULE_EXTENSIONS = ['.ts', '.mts', '.cts', '.js', '.mjs', '.cjs'];

export function isTemplateModule(file: string): boolean {
  return TEMPLATE_MODULE_EXTENSIONS.some((extension) => file.endsWith(extension));
}

/**
 * Loads a template module (TypeScript or JavaScript) and returns its Template: the default export, or the one named
 * `template`. The file is bundled by esbuild next to itself, because the SDK's Template() takes the directory of its
 * caller as the build context and other packages the file imports resolve from there; `e2b` is pointed at the CLI's
 * own copy, so the Template the file builds is one this CLI's Template.build recognises.
 */
export async function loadTemplateModule(path: string, file = path): Promise<TemplateClass> {
  const bundle = join(dirname(path), `.kiln-template-${basename(path).replace(/\W/g, '_')}-${randomBytes(4).toString('hex')}.mjs`);
  const e2bEntry = require.resolve('e2b');
  try {
    try {
      await build({
        entryPoints: [path],
        outfile: bundle,
        bundle: true,
        platform: 'node',
        format: 'esm',
        target: 'node20',
        packages: 'external',
        logLevel: 'silent',
        // CommonJS template files (require('e2b')) keep working inside the ES module bundle.
        banner: { js: "import { createRequire as __kilnCreateRequire } from 'node:module'; const require = __kilnCreateRequire(import.meta.url);" },
        plugins: [
          {
            name: 'kiln-e2b',
            setup(builder) {
              builder.onResolve({ filter: /^e2b$/ }, () => ({ path: e2bEntry, external: true }));
            },
          },
        ],
      });
    } catch (error) {
      const errors = (error as { errors?: Array<{ text: string; location?: { file: string; line: number } }> }).errors ?? [];
      const detail = errors.map((e) => (e.location ? `${e.location.file}:${e.location.line}: ${e.text}` : e.text)).join('\n') || (error as Error).message;
      throw new TemplateFileError(`cannot compile ${file}:\n${detail}`);
    }
    let loaded: Record<string, unknown>;
    try {
      loaded = (await import(pathToFileURL(bundle).href)) as Record<string, unknown>;
    } catch (error) {
      throw new TemplateFileError(`loading ${file} failed: ${(error as Error).stack ?? error}`);
    }
    const candidate = loaded.default ?? loaded.template;
    if (!(candidate instanceof Template)) {
      throw new TemplateFileError(
        `${file} does not export a Template: export default Template().fromTemplate('base')… (or export const template = …)`,
      );
    }
    return candidate as TemplateClass;
  } finally {
    rmSync(bundle, { force: true });
  }
}
