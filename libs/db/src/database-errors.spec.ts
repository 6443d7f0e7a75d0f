import { ErrorCode } from '@kiln/contracts';
import { Prisma } from '@prisma/client';
import { asDatabaseUnavailable } from './database-errors';

const prismaError = (code: string, message: string) => new Prisma.PrismaClientKnownRequestError(message, { code, clientVersion: 'test' });

describe('asDatabaseUnavailable', () => {
  it('reads an exhausted pool or a transaction that could not start in time as an outage (503), not a 500', () => {
    for (const error of [
      prismaError('P2024', 'Timed out fetching a new connection from the connection pool.'),
      prismaError('P2028', 'Transaction API error: Unable to start a transaction in the given time.'),
    ]) {
      expect(asDatabaseUnavailable(error)).toMatchObject({ code: ErrorCode.Unavailable });
    }
  });

  it('leaves a wrong query alone (a constraint violation is not an outage)', () => {
    expect(asDatabaseUnavailable(prismaError('P2002', 'Unique constraint failed on the fields: (`id`)'))).toBeUndefined();
  });
});
