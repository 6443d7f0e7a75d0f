import { Injectable, PipeTransform } from '@nestjs/common';
import { ClassConstructor } from 'class-transformer';
import { KilnError, validatePayload } from '@kiln/contracts';

/**
 * How deep a JSON body may nest. E2B's deepest body nests three levels (network.allowOut[i]); class-transformer walks
 * unknown nested fields recursively, so a `{"a":{"a":...}}` body a few thousand levels deep overflowed the call stack
 * (a 500, found by tools/fuzz) before validation could strip it.
 */
export const MAX_PAYLOAD_DEPTH = 32;

/** Whether `value` nests objects or arrays deeper than `limit` levels; walked without recursion, for the same reason. */
export function nestsDeeperThan(value: unknown, limit: number): boolean {
  const pending: Array<[unknown, number]> = [[value, 1]];
  while (pending.length > 0) {
    const [node, depth] = pending.pop()!;
    if (typeof node !== 'object' || node === null) continue;
    if (depth > limit) return true;
    for (const child of Object.values(node)) pending.push([child, depth + 1]);
  }
  return false;
}

/**
 * Validates a request body or query against a contracts DTO; failures become one
 * invalid_argument error naming every offending field. With `optional`, a missing
 * body counts as `{}` (E2B clients POST some actions without one). `precheck` sees
 * the body before unknown fields are stripped.
 */
@Injectable()
export class PayloadPipe<T extends object> implements PipeTransform<unknown, T> {
  constructor(
    private readonly dto: ClassConstructor<T>,
    private readonly options: { optional?: boolean; precheck?: (raw: unknown) => void } = {},
  ) {}

  transform(value: unknown): T {
    if (nestsDeeperThan(value, MAX_PAYLOAD_DEPTH)) throw KilnError.invalid(`request body nests deeper than ${MAX_PAYLOAD_DEPTH} levels`);
    // Runs on the raw body: validation strips fields the DTO does not know.
    this.options.precheck?.(value);
    const plain = value === undefined || (value === null && this.options.optional) ? (this.options.optional ? {} : value) : value;
    return validatePayload(this.dto, plain);
  }
}
