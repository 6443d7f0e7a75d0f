import { AgentServer } from './server/agent-server';
import { createAgentRequestHandler } from './http/agent-request-handler';
import { FilesystemService } from './filesystem/filesystem-service';
import { ProcessTable } from './process/process-table';
import { AgentState } from './runtime/agent-state';
import { ClockSync, type ClockSyncMode } from './runtime/clock-sync';
import { SystemUserDirectory } from './users/system-users';

export const DEFAULT_PORT = 49983;

interface CliOptions {
  port: number;
  host?: string;
  clockSync: ClockSyncMode;
}

function parseCli(argv: string[]): CliOptions {
  const options: CliOptions = { port: DEFAULT_PORT, clockSync: 'auto' };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split('=', 2);
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--port': {
        const port = Number(value());
        if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`invalid --port`);
        options.port = port;
        break;
      }
      case '--host':
        options.host = value();
        break;
      case '--clock-sync': {
        const mode = value();
        if (mode !== 'auto' && mode !== 'always' && mode !== 'never') throw new Error('--clock-sync is auto|always|never');
        options.clockSync = mode;
        break;
      }
      case '--help':
        process.stdout.write('guest-agent [--port N] [--host ADDR] [--clock-sync auto|always|never]\n');
        process.exit(0);
      // falls through (exit does not return)
      default:
        throw new Error(`unknown argument '${argv[i]}'`);
    }
  }
  return options;
}

async function main(): Promise<void> {
  let options: CliOptions;
  try {
    options = parseCli(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`guest-agent: ${(err as Error).message}\n`);
    process.exit(2);
  }
  const state = new AgentState();
  const users = new SystemUserDirectory();
  const processes = new ProcessTable();
  const filesystem = new FilesystemService(state, users);
  const clock = new ClockSync(options.clockSync);
  const server = new AgentServer(createAgentRequestHandler({ state, users, processes, filesystem, clock }));

  const shutdown = (signal: string) => {
    process.stderr.write(`guest-agent: ${signal}, stopping\n`);
    processes.killAll();
    filesystem.closeAll();
    server.close();
    setTimeout(() => process.exit(0), 50).unref();
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
  // A client that goes away mid-write must never take the agent down.
  process.on('SIGPIPE', () => undefined);
  process.on('uncaughtException', (err) => process.stderr.write(`guest-agent: uncaught: ${err.stack ?? err}\n`));
  process.on('unhandledRejection', (err) => process.stderr.write(`guest-agent: unhandled: ${String(err)}\n`));

  const address = await server.listen(options.port, options.host);
  process.stdout.write(
    `guest-agent listening on ${address.address}:${address.port} (clock sync ${clock.isEnabled ? 'on' : 'off'})\n`,
  );
}

void main().catch((err) => {
  process.stderr.write(`guest-agent: failed to start: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
