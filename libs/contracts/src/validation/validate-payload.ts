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
  const instance = plainToInstance(cls, plain, { enableImplicitConversion: false });
  const errors = validateSync(instance, { whitelist: true, forbidNonWhitelisted: false, forbidUnknownValues: true });
  if (errors.length > 0) {
    throw new KilnError(ErrorCode.InvalidArgument, describeValidationErrors(errors).join('; '));
  }
  return instance;
}
