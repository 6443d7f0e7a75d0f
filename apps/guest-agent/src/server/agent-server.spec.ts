import { connect } from 'node:net';
import { AgentServer } from './agent-server';

function exchange(port: number, raw: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(raw));
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
  });
}

describe('AgentServer', () => {
  let server: AgentServer;
  let port: number;

  beforeAll(async () => {
    server = new AgentServer((_req, res) => {
      res.writeHead(204);
      res.end();
    });
    port = (await server.listen(0, '127.0.0.1')).port;
  });

  afterAll(() => server.close());

  it('answers CONNECT with 405 {code, message} instead of dropping the connection unanswered', async () => {
    const answer = await exchange(port, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 405 Method Not Allowed\r\n/);
    expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toEqual({ code: 405, message: 'method CONNECT is not allowed' });
  });

  it('still hands every other method to the handler (control)', async () => {
    expect(await exchange(port, 'GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')).toMatch(/^HTTP\/1\.1 204 /);
  });
});
