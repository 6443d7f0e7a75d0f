import { resolveUserPath } from './path-resolution';

const user = { name: 'user', uid: 1000, gid: 1000, home: '/home/user', shell: '/bin/bash', groups: [1000] };

describe('resolveUserPath', () => {
  it.each([
    ['~', '/home/user'],
    ['~/a/b', '/home/user/a/b'],
    ['notes.txt', '/home/user/notes.txt'],
    ['', '/home/user'],
    ['/etc/../tmp/x', '/tmp/x'],
  ])('%s → %s', (input, expected) => {
    expect(resolveUserPath(input, user)).toBe(expected);
  });
});
