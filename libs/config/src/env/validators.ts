import { ValidationOptions, registerDecorator } from 'class-validator';

/** A URL whose scheme is one of `schemes`; hostnames need no TLD (localhost, k8s service names). */
export function IsServiceUrl(schemes: string[], options?: ValidationOptions): PropertyDecorator {
  return (target: object, propertyName: string | symbol) =>
    registerDecorator({
      name: 'isServiceUrl',
      target: target.constructor,
      propertyName: propertyName as string,
      options,
      validator: {
        validate(value: unknown) {
          if (typeof value !== 'string') return false;
          try {
            const url = new URL(value);
            return schemes.includes(url.protocol.replace(/:$/, '')) && url.hostname.length > 0;
          } catch {
            return false;
          }
        },
        defaultMessage: (args) => `${args?.property} must be a ${schemes.join('/')} URL`,
      },
    });
}
