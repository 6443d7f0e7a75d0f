import { isIP } from 'node:net';
import { Transform } from 'class-transformer';
import { IsBoolean, ValidationOptions, registerDecorator } from 'class-validator';

/** A string-valued env check: `accepts` decides, `expectation` completes "<VARIABLE> must be …". */
function stringCheck(name: string, accepts: (value: string) => boolean, expectation: string, options?: ValidationOptions): PropertyDecorator {
  return (target: object, propertyName: string | symbol) =>
    registerDecorator({
      name,
      target: target.constructor,
      propertyName: propertyName as string,
      options,
      validator: {
        validate: (value: unknown) => typeof value === 'string' && accepts(value),
        defaultMessage: (args) => `${args?.property} must be ${expectation}`,
      },
    });
}

/** A URL whose scheme is one of `schemes`; hostnames need no TLD (localhost, k8s service names). */
export function IsServiceUrl(schemes: string[], options?: ValidationOptions): PropertyDecorator {
  const accepts = (value: string) => {
    try {
      const url = new URL(value);
      return schemes.includes(url.protocol.replace(/:$/, '')) && url.hostname.length > 0;
    } catch {
      return false;
    }
  };
  return stringCheck('isServiceUrl', accepts, `a ${schemes.join('/')} URL`, options);
}

const TRUE_WORDS = new Set(['true', '1', 'yes', 'on']);
const FALSE_WORDS = new Set(['false', '0', 'no', 'off']);

/**
 * A boolean env variable. Implicit conversion would turn the string "false" into true, so the raw text is read
 * here: true/1/yes/on or false/0/no/off (any case); anything else fails validation with the variable's name.
 */
export function IsEnvBoolean(options?: ValidationOptions): PropertyDecorator {
  return (target: object, propertyName: string | symbol) => {
    Transform(({ obj, key, value }) => {
      const raw = (obj as Record<string, unknown>)[key];
      if (typeof raw === 'boolean') return raw;
      if (typeof raw !== 'string') return value;
      const word = raw.trim().toLowerCase();
      return TRUE_WORDS.has(word) ? true : FALSE_WORDS.has(word) ? false : raw;
    })(target, propertyName as string);
    IsBoolean({ message: `${String(propertyName)} must be true or false`, ...options })(target, propertyName as string);
  };
}

/** A comma-separated list of at most `max` IP addresses (v4 or v6); empty is allowed (no entries). */
export function IsIpList(max: number, options?: ValidationOptions): PropertyDecorator {
  const accepts = (value: string) => {
    const entries = ipListEntries(value);
    return entries.length <= max && entries.every((ip) => isIP(ip) !== 0);
  };
  return stringCheck('isIpList', accepts, `a comma-separated list of at most ${max} IP addresses`, options);
}

/** The entries of an IsIpList value. */
export function ipListEntries(value: string): string[] {
  return value
    .split(',')
    .map((entry) => entry.trim())
    .filter((entry) => entry.length > 0);
}
