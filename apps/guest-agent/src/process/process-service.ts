import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { MessageInitShape } from '@bufbuild/protobuf';
import {
  Process,
  Signal,
  type ProcessSelector,
  type StartResponseSchema,
  type ProcessInput,
} from '@kiln/proto/process';
import { resolveUserPath } from '../filesystem/path-resolution';
import { keepaliveIntervalMs, requestUser } from '../rpc/rpc-context';
import type { AgentState } from '../runtime/agent-state';
import type { OomPolicy } from '../runtime/oom-policy';
import type { SystemUser, SystemUserDirectory } from '../users/system-users';
import type { EventQueue } from '../streaming/event-queue';
import { ProcessInputError, type ManagedProcess, type ProcessOutput, type ProcessSpec } from './managed-process';
import { ProcessNotFoundError, ProcessStartError, type ProcessSelection, type ProcessTable } from './process-table';

type ProcessEventInit = NonNullable<MessageInitShape<typeof StartResponseSchema>['event']>;

const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Implements envd's `process.Process` over the process table. */
export function createProcessService(
  table: ProcessTable,
  state: AgentState,
  users: SystemUserDirectory,
  oom: OomPolicy,
): ServiceImpl<typeof Process> {
  const find = (selector: ProcessSelector | undefined): ManagedProcess => {
    try {
      return table.find(selectionOf(selector));
    } catch (err) {
      if (err instanceof ProcessNotFoundError) throw new ConnectError(err.message, Code.NotFound);
      throw err;
    }
  };

  const writeInput = async (target: ManagedProcess, input: ProcessInput | undefined): Promise<void> => {
    const value = input?.input;
    if (!value?.case) throw new ConnectError('input is required', Code.InvalidArgument);
    // A PTY process has one input, the terminal: stdin bytes go there too.
    await inputCall(() => target.writeInput(Buffer.from(value.value), target.isPty ? 'pty' : value.case));
  };

  return {
    async list() {
      return {
        processes: table.list().map((p) => ({
          pid: p.pid,
          tag: p.tag,
          config: { cmd: p.spec.cmd, args: p.spec.args, envs: p.spec.envs, cwd: p.spec.cwd },
        })),
      };
    },

    async *start(req, ctx) {
      const user = requestUser(ctx, state, users);
      const config = req.process;
      if (!config?.cmd) throw new ConnectError('process.cmd is required', Code.InvalidArgument);
      // envd pipes stdin unless the request explicitly turns it off (older SDKs never send the field).
      const spec = buildSpec(config, req.tag, req.stdin ?? true, req.pty?.size, user, state, oom.childrenNeedReset);
      let launched: Awaited<ReturnType<ProcessTable['start']>>;
      try {
        launched = await table.start(spec);
      } catch (err) {
        if (err instanceof ProcessStartError) {
          throw new ConnectError(err.message, err.reason === 'invalid_argument' ? Code.InvalidArgument : Code.Internal);
        }
        throw err;
      }
      launched.started.killAfter(connectTimeoutMs(ctx));
      yield* streamEvents(launched.started, launched.events, ctx);
    },

    async *connect(req, ctx) {
      const target = find(req.process);
      yield* streamEvents(target, target.subscribe(), ctx);
    },

    async update(req) {
      const target = find(req.process);
      const size = req.pty?.size;
      if (size) await inputCall(async () => target.resize(size.cols, size.rows));
      return {};
    },

    async streamInput(requests) {
      let target: ManagedProcess | undefined;
      for await (const message of requests) {
        const event = message.event;
        if (event.case === 'start') target = find(event.value.process);
        else if (event.case === 'data') {
          if (!target) throw new ConnectError('the first message must select the process', Code.FailedPrecondition);
          await writeInput(target, event.value.input);
        }
      }
      return {};
    },

    async sendInput(req) {
      await writeInput(find(req.process), req.input);
      return {};
    },

    async sendSignal(req) {
      const target = find(req.process);
      if (req.signal === Signal.SIGKILL) target.signal('SIGKILL');
      else if (req.signal === Signal.SIGTERM) target.signal('SIGTERM');
      else throw new ConnectError(`unsupported signal ${req.signal}`, Code.InvalidArgument);
      return {};
    },

    async closeStdin(req) {
      const target = find(req.process);
      await inputCall(async () => target.closeStdin());
      return {};
    },
  };
}

/** The client's deadline for Start (Connect-Timeout-Ms); the SDK sends 60000 unless told otherwise, 0 = none. */
function connectTimeoutMs(ctx: HandlerContext): number {
  const raw = ctx.requestHeader.get('connect-timeout-ms');
  const ms = raw ? Number(raw) : 0;
  return Number.isFinite(ms) && ms > 0 ? ms : 0;
}

function selectionOf(selector: ProcessSelector | undefined): ProcessSelection {
  const chosen = selector?.selector;
  if (chosen?.case === 'pid') return { by: 'pid', pid: chosen.value };
  if (chosen?.case === 'tag') return { by: 'tag', tag: chosen.value };
  throw new ConnectError('process selector (pid or tag) is required', Code.InvalidArgument);
}

async function inputCall(action: () => Promise<void>): Promise<void> {
  try {
    await action();
  } catch (err) {
    if (err instanceof ProcessInputError) throw new ConnectError(err.message, Code.FailedPrecondition);
    throw err;
  }
}

function buildSpec(
  config: { cmd: string; args: string[]; envs: Record<string, string>; cwd?: string },
  tag: string | undefined,
  stdin: boolean,
  ptySize: { cols: number; rows: number } | undefined,
  user: SystemUser,
  state: AgentState,
  resetOomScore: boolean,
): ProcessSpec {
  // As envd: the agent's own PATH, the user's identity, then /init's env vars, then the request's (last wins).
  const env: Record<string, string> = {
    PATH: process.env.PATH || DEFAULT_PATH,
    HOME: user.home,
    USER: user.name,
    LOGNAME: user.name,
  };
  for (const [key, value] of state.envVars) env[key] = value;
  Object.assign(env, config.envs);
  const cwd = config.cwd ? resolveUserPath(config.cwd, user) : (state.defaultWorkdir ?? user.home);
  return {
    cmd: config.cmd,
    args: config.args,
    envs: { ...config.envs },
    env,
    cwd,
    uid: user.uid,
    gid: user.gid,
    groups: user.groups,
    resetOomScore,
    tag,
    stdin,
    pty: ptySize ? { cols: ptySize.cols, rows: ptySize.rows } : undefined,
  };
}

/**
 * The event stream of Start and Connect: start{pid}, then output as it comes, then end. Keepalives fill silences so
 * proxies and the client's idle timers do not cut a quiet process off. Leaving (client gone, deadline) only
 * unsubscribes: the process keeps running.
 */
async function* streamEvents(
  target: ManagedProcess,
  queue: EventQueue<ProcessOutput>,
  ctx: HandlerContext,
): AsyncGenerator<{ event: ProcessEventInit }> {
  const idleMs = keepaliveIntervalMs(ctx);
  try {
    yield { event: { event: { case: 'start', value: { pid: target.pid } } } };
    for (;;) {
      if (ctx.signal.aborted) return;
      const next = await queue.pull(idleMs, ctx.signal);
      if (next.kind === 'closed') return;
      if (next.kind === 'idle') {
        if (ctx.signal.aborted) return;
        yield { event: { event: { case: 'keepalive', value: {} } } };
        continue;
      }
      const output = next.item;
      if (output.kind === 'end') {
        const { exitCode, exited, status, error } = output.status;
        yield { event: { event: { case: 'end', value: { exitCode, exited, status, error } } } };
        return;
      }
      yield { event: { event: { case: 'data', value: { output: { case: output.kind, value: output.data } } } } };
    }
  } finally {
    target.unsubscribe(queue);
  }
}
