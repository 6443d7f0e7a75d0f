import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DataExtentsUnavailableError } from './firecracker.errors';

const ADDON_FILE = 'data_extents.node';

/** [offset, length] in bytes of one run of data in a sparse file; holes lie between runs. */
export type DataExtent = [offset: number, length: number];

/** Lists the data extents of an open file, ascending; throws an Error with `code` (errno name) on failure. */
export type DataExtentsReader = (fd: number) => DataExtent[];

interface DataExtentsAddon {
  dataExtents: DataExtentsReader;
}

/** The node-gyp build directory, from the TypeScript source (tests) and from tsc output (dist/) alike. */
function addonCandidates(): string[] {
  return [join(__dirname, '..', '..', '..', 'native', 'build', 'Release', ADDON_FILE)];
}

let loaded: DataExtentsReader | undefined;

/**
 * lseek(SEEK_DATA/SEEK_HOLE) over a whole file, from the host agent's native addon (apps/host-agent/native/
 * data_extents.c): Node's fs has no such call. Loaded on first use, so a host that never checkpoints a Firecracker
 * VM does not need it. Throws DataExtentsUnavailableError naming every place it looked.
 */
export function loadDataExtentsReader(): DataExtentsReader {
  if (loaded) return loaded;
  const candidates = addonCandidates();
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw new DataExtentsUnavailableError(
      `native addon ${ADDON_FILE} not found (looked in ${candidates.join(', ')}); build it with npx nx run host-agent:build-native`,
    );
  }
  const module = { exports: {} as DataExtentsAddon };
  try {
    process.dlopen(module, found);
  } catch (error) {
    throw new DataExtentsUnavailableError(`native addon ${found} does not load: ${(error as Error).message}`);
  }
  if (typeof module.exports.dataExtents !== 'function') throw new DataExtentsUnavailableError(`native addon ${found} has no dataExtents()`);
  loaded = module.exports.dataExtents;
  return loaded;
}
