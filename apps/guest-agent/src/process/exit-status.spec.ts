import { exitStatusOf } from './exit-status';

describe('exitStatusOf (Go ProcessState semantics, as envd reports end events)', () => {
  it('reports a clean exit without an error', () => {
    expect(exitStatusOf(0, null)).toEqual({ exitCode: 0, exited: true, status: 'exit status 0' });
  });
  it('reports a failing exit with the status as error', () => {
    expect(exitStatusOf(3, null)).toEqual({ exitCode: 3, exited: true, status: 'exit status 3', error: 'exit status 3' });
  });
  it('reports signals with Go signal names and exit code -1', () => {
    expect(exitStatusOf(null, 'SIGKILL')).toMatchObject({ exitCode: -1, exited: false, status: 'signal: killed' });
    expect(exitStatusOf(null, 'SIGTERM')).toMatchObject({ status: 'signal: terminated' });
    expect(exitStatusOf(0, 2)).toMatchObject({ status: 'signal: interrupt', exited: false });
  });
});
