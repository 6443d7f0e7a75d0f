import { ErrorCode, KilnError } from '@kiln/contracts';

export class InvalidAdminRequestError extends KilnError {
  constructor(detail: string) {
    super(ErrorCode.InvalidArgument, detail);
  }
}
