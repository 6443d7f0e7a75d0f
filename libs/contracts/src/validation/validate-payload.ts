import { ClassConstructor, plainToInstance } from 'class-transformer';
import { ValidationError, validateSync } from 'class-validator';
import { ErrorCode } from '../errors/error-codes';
import { KilnError } from '../errors/kiln-error';

/** Flattens nested class-validator errors into `field.sub: message` lines. */
export function describeValidationErrors(errors: ValidationError[], parent = ''): string[] {
  const lines: string[] = [];
  for (const error of errors) {
    const path = parent ? `${parent}.${error.property}` : error.property;
    for (const message of Object.values(error.constraints ?? {})) {
      lines.push(message.startsWith(error.property) ? `${path}${message.slice(error.property.length)}` : `${path}: ${message}`);
    }
    if (error.children?.length) lines.push(...describeValidationErrors(error.children, path));
  }
  return lines;
}

/**
 * Turns untrusted input into a validated DTO instance, or throws an
 * invalid_argument KilnError naming every offending field.
 */
export function validatePayload<T extends object>(cls: ClassConstructor<T>, plain: unknown): T {
  if (typeof plain !== 'object' || plain === null || Array.isArray(plain)) {
    throw new KilnError(ErrorCode.InvalidArgument, 'request body must be a JSON object');
  }
  const forbidden = forbiddenKeyPath(plain);
  if (forbidden) throw new KilnError(ErrorCode.InvalidArgument, `${forbidden}: this key is not accepted`);
  let instance: T;
  try {
    instance = plainToInstance(cls, plain, { enableImplicitConversion: false });
  } catch {
    // class-transformer throws TypeErrors on shapes it cannot walk: that is malformed input, never a server fault.
    throw new KilnError(ErrorCode.InvalidArgument, 'request body has a shape that cannot be read');
  }
  const errors = validateSync(instance, { whitelist: true, forbidNonWhitelisted: false, forbidUnknownValues: true });
  if (errors.length > 0) {
    throw new KilnError(ErrorCode.InvalidArgument, describeValidationErrors(errors).join('; '));
  }
  return instance;
}

/** Keys JSON.parse makes own properties but that object walkers treat as the prototype chain. */
const PROTOTYPE_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

/** The path of the first `__proto__`/`constructor`/`prototype` key at any depth (up to 32 levels), if any. */
export function forbiddenKeyPath(value: unknown, path = '', depth = 0): string | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  if (depth > 32) return path || '(body)';
  for (const key of Object.keys(value)) {
    const here = Array.isArray(value) ? `${path}[${key}]` : path ? `${path}.${key}` : key;
    if (!Array.isArray(value) && PROTOTYPE_KEYS.has(key)) return here;
    const found = forbiddenKeyPath((value as Record<string, unknown>)[key], here, depth + 1);
    if (found) return found;
  }
  return undefined;
}
