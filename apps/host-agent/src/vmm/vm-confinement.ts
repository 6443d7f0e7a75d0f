import { createWriteStream } from 'node:fs';
import { chmod, chown, mkdir, readdir, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { confinementDir } from './qemu-command-line';
import { VmSnapshotError } from './vmm.errors';
import type { VmmIdentity } from './vmm-identities';

/**
 * The directory a VM that may be snapshotted is chrooted into: root-owned, searchable but not listable or writable
 * by the VMM, empty until the agent puts a snapshot socket in it. Anything left there by an earlier VM of the same
 * state dir goes first.
 */
export async function prepareConfinementDir(stateDir: string): Promise<string> {
  const dir = confinementDir(stateDir);
  await mkdir(dir, { recursive: true });
  for (const entry of await readdir(dir)) await rm(`${dir}/${entry}`, { recursive: true, force: true });
  await chmod(dir, 0o711);
  return dir;
}

/**
 * Receives a migration stream on a unix socket in the VM's chroot and writes it to a file. QEMU, chrooted and
 * denied spawning, cannot run a writer (`exec:`), and QEMU 7.2 takes an outgoing `fd:` only by the name of an fd
 * passed over QMP with SCM_RIGHTS, which node's sockets cannot send.
 */
export class SnapshotReceiver {
  private stream: Promise<void> | undefined;
  private readonly connected: Promise<void>;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    private readonly socketPath: string,
    destination: string,
  ) {
    this.connected = new Promise((resolve) => {
      server.on('connection', (socket: Socket) => {
        this.sockets.add(socket);
        socket.once('close', () => this.sockets.delete(socket));
        // One stream per snapshot: anything after QEMU's connection is not it.
        if (this.stream) {
          socket.destroy();
          return;
        }
        this.stream = pipeline(socket, createWriteStream(destination, { mode: 0o600 }));
        this.stream.catch(() => undefined);
        resolve();
      });
    });
  }

  /** Listens at `socketPath`, which only the VMM's uid (or root) may connect to. */
  static async listen(socketPath: string, destination: string, identity: VmmIdentity | undefined): Promise<SnapshotReceiver> {
    await rm(socketPath, { force: true });
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const receiver = new SnapshotReceiver(server, socketPath, destination);
    try {
      await chmod(socketPath, 0o600);
      if (identity) await chown(socketPath, identity.uid, identity.gid);
    } catch (error) {
      await receiver.close();
      throw error;
    }
    return receiver;
  }

  /** Resolves once QEMU closed the stream and all of it is in the file. */
  async written(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new VmSnapshotError(`snapshot stream not complete after ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await Promise.race([this.connected.then(() => this.stream), timeout]);
    } catch (error) {
      if (error instanceof VmSnapshotError) throw error;
      throw new VmSnapshotError(`writing the snapshot stream failed: ${(error as Error).message}`);
    } finally {
      clearTimeout(timer);
    }
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await rm(this.socketPath, { force: true });
  }
}
