import { Injectable, PipeTransform } from '@nestjs/common';
import { KilnError, SANDBOX_ID_PATTERN } from '@kiln/contracts';

/** Path parameter `sandboxID`: rejected with a 400 naming it before any lookup. */
@Injectable()
export class SandboxIdPipe implements PipeTransform<unknown, string> {
  transform(value: unknown): string {
    if (typeof value !== 'string' || !SANDBOX_ID_PATTERN.test(value)) {
      throw KilnError.invalid('sandboxID must be a sandbox id (1-64 lowercase letters and digits)');
    }
    return value;
  }
}
