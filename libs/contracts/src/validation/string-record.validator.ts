import { ValidationOptions, registerDecorator } from 'class-validator';

/**
 * A flat object of string → string (E2B metadata and envVars). Bounded so a
 * client cannot store megabytes of metadata per sandbox.
 */
export function IsStringRecord(
  limits: { maxEntries: number; maxKeyLength: number; maxValueLength: number },
  options?: ValidationOptions,
): PropertyDecorator {
  return (target: object, propertyName: string | symbol) => {
    registerDecorator({
      name: 'isStringRecord',
      target: target.constructor,
      propertyName: propertyName as string,
      options,
      validator: {
        validate(value: unknown): boolean {
          if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
          const entries = Object.entries(value);
          if (entries.length > limits.maxEntries) return false;
          return entries.every(
            ([k, v]) =>
              typeof v === 'string' && k.length > 0 && k.length <= limits.maxKeyLength && v.length <= limits.maxValueLength,
          );
        },
        defaultMessage(args) {
          return `${args?.property} must be an object of at most ${limits.maxEntries} string values (keys ≤ ${limits.maxKeyLength} chars, values ≤ ${limits.maxValueLength} chars)`;
        },
      },
    });
  };
}
