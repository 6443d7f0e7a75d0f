import { Code, ConnectError } from '@connectrpc/connect';
import { AccessDeniedError } from './access-check';

/** Maps a filesystem failure to the Connect code envd uses for it. */
export function fsConnectError(err: unknown, what: string): ConnectError {
  if (err instanceof ConnectError) return err;
  if (err instanceof AccessDeniedError) return new ConnectError(err.message, Code.PermissionDenied);
  const code = (err as NodeJS.ErrnoException).code;
  const message = `${what}: ${(err as Error).message}`;
  switch (code) {
    case 'ENOENT':
      return new ConnectError(message, Code.NotFound);
    case 'EACCES':
    case 'EPERM':
      return new ConnectError(message, Code.PermissionDenied);
    case 'EEXIST':
    case 'ENOTEMPTY':
      return new ConnectError(message, Code.AlreadyExists);
    case 'ENOTDIR':
    case 'EISDIR':
    case 'EINVAL':
    case 'ENAMETOOLONG':
    case 'ELOOP':
    // Node refuses a path holding a NUL byte before any syscall (no errno): the caller's input, not the agent's fault.
    case 'ERR_INVALID_ARG_VALUE':
      return new ConnectError(message, Code.InvalidArgument);
    case 'ENOSPC':
      return new ConnectError(message, Code.ResourceExhausted);
    default:
      return new ConnectError(message, Code.Internal);
  }
}
