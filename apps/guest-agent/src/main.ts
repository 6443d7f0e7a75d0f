import { AgentServer } from './server/agent-server';
import { createAgentRequestHandler } from './http/agent-request-handler';
import { EntryDescriber } from './filesystem/entry-info';
import { FileMetadataStore } from './filesystem/file-metadata';
import { FilesystemService } from './filesystem/filesystem-service';
import { ProcessTable } from './process/process-table';
import { AgentState } from './runtime/agent-state';
import { ClockSync } from './runtime/clock-sync';
import { EntropyReseed } from './runtime/entropy-reseed';
import { loadGuestAddon, type GuestAddon } from './runtime/guest-kernel';
import { ResolverConfig } from './runtime/resolver-config';
import { guestDutiesEnabled, type GuestDutiesMode } from './runtime/guest-duties';
import { OomPolicy } from './runtime/oom-policy';
import { SystemUserDirectory } from './users/system-users';
import { applyTemplateDefaults, readTemplateDefaults, TEMPLATE_DEFAULTS_PATH } from './runtime/template-defaults';

export const DEFAULT_PORT = 49983;

interface CliOptions {
  port: number;
  host?: string;
  guestDuties: GuestDutiesMode;
  /** The template's ENV/WORKDIR/USER (see template-defaults.ts). */
  templateDefaults: string;
}

function parseCli(argv: string[]): CliOptions {
  const options: CliOptions = { port: DEFAULT_PORT, guestDuties: 'auto', templateDefaults: TEMPLATE_DEFAULTS_PATH };
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
      case '--guest-duties': {
        const mode = value();
        if (mode !== 'auto' && mode !== 'on' && mode !== 'off') throw new Error('--guest-duties is auto|on|off');
        options.guestDuties = mode;
        break;
      }
      case '--template-defaults':
        options.templateDefaults = value();
        break;
      case '--help':
        process.stdout.write('guest-agent [--port N] [--host ADDR] [--guest-duties auto|on|off] [--template-defaults PATH]\n');
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
  // Guest duties (clock stepping, entropy reseeding, resolv.conf, OOM protection) act on the machine: only inside the VM, never
  // on a host. In the VM the native addon is required: a clone that cannot be reseeded must not start. Elsewhere it is
  // still used when present (command output at exit, file metadata); without it those fall back or refuse.
  const duties = guestDutiesEnabled(options.guestDuties);
  let addon: GuestAddon | undefined;
  try {
    addon = loadGuestAddon();
  } catch (err) {
    if (duties) throw err;
    process.stderr.write(`guest-agent: ${(err as Error).message}; file metadata is off, command ends use a quiet period\n`);
  }
  const state = new AgentState();
  // A built template's sandboxes run every command with its ENV, WORKDIR and USER unless a request says otherwise.
  applyTemplateDefaults(state, readTemplateDefaults(options.templateDefaults, (message) => process.stderr.write(`guest-agent: ${message}\n`)));
  const users = new SystemUserDirectory();
  const processes = new ProcessTable(addon);
  const metadata = new FileMetadataStore(addon);
  const entries = new EntryDescriber(users, metadata);
  const filesystem = new FilesystemService(state, users, entries);
  const clock = new ClockSync(duties ? addon : undefined);
  const entropy = new EntropyReseed(duties ? addon : undefined);
  const resolver = new ResolverConfig(duties);
  const oom = new OomPolicy(duties);
  oom.apply();
  const server = new AgentServer(createAgentRequestHandler({ state, users, processes, filesystem, entries, metadata, clock, entropy, resolver, oom }));

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
    `guest-agent listening on ${address.address}:${address.port} (guest duties ${duties ? 'on' : 'off'})\n`,
  );
}

void main().catch((err) => {
  process.stderr.write(`guest-agent: failed to start: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
