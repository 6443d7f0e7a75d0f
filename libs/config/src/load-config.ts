import 'reflect-metadata';
import { ClassConstructor, plainToInstance } from 'class-transformer';
import { ValidationError, validateSync } from 'class-validator';

/** Thrown when the environment does not satisfy an app's schema; its message is one line naming the variables. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Variables that hold secrets: their values never appear in a configuration error (it is logged). */
const SECRET_VARIABLE = /(TOKEN|KEY|PASSWORD|SECRET)$/;

/** A rejected value as the error may show it: secrets by length only, a URL's password masked. */
function shownValue(variable: string, value: unknown): string {
  const text = String(value);
  if (SECRET_VARIABLE.test(variable)) return `${text.length} characters, not shown`;
  try {
    const url = new URL(text);
    if (url.password) {
      url.password = '***';
      return JSON.stringify(url.toString().slice(0, 80));
    }
  } catch {
    // not a URL
  }
  return JSON.stringify(text.slice(0, 80));
}

function describe(errors: ValidationError[]): string {
  return errors
    .map((e) => {
      const got = e.value === undefined ? 'unset' : `got ${shownValue(e.property, e.value)}`;
      const why = Object.values(e.constraints ?? {})[0] ?? 'is invalid';
      return `${why} (${got})`;
    })
    .join('; ');
}

/**
 * Reads and validates an app's environment. Unknown variables are ignored;
 * empty strings count as unset so `FOO=` in a ConfigMap falls back to the default.
 */
export function loadConfig<T extends object>(schema: ClassConstructor<T>, env: NodeJS.ProcessEnv = process.env): T {
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const config = plainToInstance(schema, present, { enableImplicitConversion: true, exposeDefaultValues: true });
  const errors = validateSync(config, { whitelist: true, forbidUnknownValues: true });
  if (errors.length > 0) throw new ConfigError(`invalid configuration: ${describe(errors)}`);
  return config;
}
