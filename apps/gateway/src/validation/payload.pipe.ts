import { Injectable, PipeTransform } from '@nestjs/common';
import { ClassConstructor } from 'class-transformer';
import { validatePayload } from '@kiln/contracts';

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
    // Runs on the raw body: validation strips fields the DTO does not know.
    this.options.precheck?.(value);
    const plain = value === undefined || (value === null && this.options.optional) ? (this.options.optional ? {} : value) : value;
    return validatePayload(this.dto, plain);
  }
}
