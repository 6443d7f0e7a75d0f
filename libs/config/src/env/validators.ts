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

/**
 * Words a secret is left at when nobody replaced it: sample values, tutorial defaults and manifest placeholders.
 * Compared after lower-casing and dropping everything but letters and digits (so `Change_Me`, `change-me-token`).
 */
const PLACEHOLDER_FRAGMENTS = ['changeme', 'replaceme', 'placeholder', 'example', 'notasecret', 'insecure', 'dummy', 'fixme'];
/** Whole values (optionally followed by digits) that are never a real secret. */
const PLACEHOLDER_WORDS = new Set(['secret', 'password', 'passwd', 'pass', 'token', 'key', 'admin', 'root', 'test', 'default', 'kiln', 'redis', 'postgres', 'qwerty', 'letmein', 'none', 'null', 'empty']);

/** Why `value` is not a secret anyone should run with, or undefined when it may be one. */
export function placeholderSecretReason(value: string): string | undefined {
  if (value.trim().length === 0) return 'is empty';
  const letters = value.toLowerCase().replace(/[^a-z0-9]/g, '');
  const fragment = PLACEHOLDER_FRAGMENTS.find((f) => letters.includes(f));
  if (fragment) return `is a placeholder (contains "${fragment}")`;
  if (PLACEHOLDER_WORDS.has(letters.replace(/\d+$/, ''))) return 'is a well-known default, not a secret';
  if (/^(.)\1*$/s.test(value)) return 'repeats a single character';
  if (letters.length > 0 && '0123456789abcdefghijklmnopqrstuvwxyz'.includes(letters) && letters.length >= 4) return 'is a run of consecutive characters';
  return undefined;
}

function isProduction(object: unknown): boolean {
  return (object as { NODE_ENV?: unknown } | undefined)?.NODE_ENV === 'production';
}

/**
 * A secret that must have been replaced in production (NODE_ENV=production): empty values and placeholders such as
 * the ones deploy/base/secret.yaml ships (`change-me…`), `secret`, `password`, all-same-character, are refused with
 * the variable's name, so a deployment never runs on a secret everyone can read in the repository. Outside
 * production anything is accepted (tests and the dev stack use readable values).
 */
export function IsRealSecretInProduction(options?: ValidationOptions): PropertyDecorator {
  return (target: object, propertyName: string | symbol) =>
    registerDecorator({
      name: 'isRealSecretInProduction',
      target: target.constructor,
      propertyName: propertyName as string,
      options,
      validator: {
        validate: (value: unknown, args) => !isProduction(args?.object) || (typeof value === 'string' && placeholderSecretReason(value) === undefined),
        defaultMessage: (args) =>
          `${args?.property} ${typeof args?.value === 'string' ? placeholderSecretReason(args.value) : 'is missing'}: production needs a real secret (generate one, e.g. openssl rand -hex 32)`,
      },
    });
}

/**
 * The password inside a service URL (`redis://:<password>@host`, `postgresql://user:<password>@host`) must be a
 * real secret in production: not a placeholder, and present unless `passwordOptional` (Postgres can authenticate
 * without one in the URL: client certificates, peer/trust on the host, PGPASSFILE).
 */
export function HasRealUrlPasswordInProduction(options?: ValidationOptions & { passwordOptional?: boolean }): PropertyDecorator {
  const reason = (value: unknown): string | undefined => {
    if (typeof value !== 'string') return 'is missing';
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      return undefined; // the URL validator reports it
    }
    const password = decodeURIComponent(url.password);
    if (password.length === 0) return options?.passwordOptional ? undefined : 'has no password';
    const why = placeholderSecretReason(password);
    return why ? `has a password that ${why}` : undefined;
  };
  return (target: object, propertyName: string | symbol) =>
    registerDecorator({
      name: 'hasRealUrlPasswordInProduction',
      target: target.constructor,
      propertyName: propertyName as string,
      options,
      validator: {
        validate: (value: unknown, args) => !isProduction(args?.object) || reason(value) === undefined,
        defaultMessage: (args) => `${args?.property} ${reason(args?.value) ?? 'is invalid'}: production needs a real password in it`,
      },
    });
}

/** One IP address or CIDR block (v4 or v6), e.g. `10.0.0.0/8`, `192.0.2.7`, `fd00::/8`. */
function isAddressOrCidr(entry: string): boolean {
  const [address, prefix, ...rest] = entry.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  return /^\d{1,3}$/.test(prefix) && Number(prefix) <= (family === 4 ? 32 : 128);
}

/** A comma-separated list of at most `max` IP addresses or CIDR blocks; empty is allowed (no entries). */
export function IsAddressList(max: number, options?: ValidationOptions): PropertyDecorator {
  const accepts = (value: string) => {
    const entries = ipListEntries(value);
    return entries.length <= max && entries.every(isAddressOrCidr);
  };
  return stringCheck('isAddressList', accepts, `a comma-separated list of at most ${max} IP addresses or CIDR blocks`, options);
}
