import { connect, createServer } from 'node:net';

/** Every port freePort() handed out in this process: a port closed again is free to the kernel, not to us. */
const handedOut = new Set<number>();

/**
 * A TCP port nothing listens on right now (the kernel's choice), never one this process was given before: the ports of
 * a stack are picked before anything binds them, and the kernel may well offer a port it offered a moment ago (a host
 * agent once got the same port for its HTTP listener and its egress proxy, and failed with EADDRINUSE).
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = await kernelFreePort();
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
}

function kernelFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

export async function waitForPort(port: number, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on ${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
