import { IsOptional, IsString } from 'class-validator';
import { ErrorCode, KilnError } from '@kiln/contracts';
import { MAX_PAYLOAD_DEPTH, PayloadPipe, nestsDeeperThan } from './payload.pipe';

class NoteDto {
  @IsOptional() @IsString()
  note?: string;
}

const nested = (levels: number) => JSON.parse('{"a":'.repeat(levels - 1) + '{}' + '}'.repeat(levels - 1)) as unknown;

describe('PayloadPipe nesting limit', () => {
  const pipe = new PayloadPipe(NoteDto, { optional: true });

  it('refuses a body nested thousands of levels deep with invalid_argument, not a stack overflow (found by tools/fuzz)', () => {
    const thrown = (() => {
      try {
        pipe.transform(nested(5000));
      } catch (error) {
        return error;
      }
    })();
    expect(thrown).toBeInstanceOf(KilnError);
    expect(thrown).toMatchObject({ code: ErrorCode.InvalidArgument, message: `request body nests deeper than ${MAX_PAYLOAD_DEPTH} levels` });
  });

  it('passes bodies up to the limit (control) and counts arrays as levels too', () => {
    expect(pipe.transform({ note: 'x', extra: nested(MAX_PAYLOAD_DEPTH - 1) })).toEqual({ note: 'x' });
    expect(nestsDeeperThan(nested(MAX_PAYLOAD_DEPTH), MAX_PAYLOAD_DEPTH)).toBe(false);
    expect(nestsDeeperThan(nested(MAX_PAYLOAD_DEPTH + 1), MAX_PAYLOAD_DEPTH)).toBe(true);
    expect(nestsDeeperThan(JSON.parse('['.repeat(40) + ']'.repeat(40)), MAX_PAYLOAD_DEPTH)).toBe(true);
    expect(nestsDeeperThan('flat', MAX_PAYLOAD_DEPTH)).toBe(false);
  });
});
