import { goModeString } from './entry-info';

describe('goModeString (Go os.FileMode.String, as envd sends permissions)', () => {
  it.each([
    [0o100644, '-rw-r--r--'],
    [0o100755, '-rwxr-xr-x'],
    [0o040755, 'drwxr-xr-x'],
    [0o120777, 'Lrwxrwxrwx'],
    [0o010644, 'prw-r--r--'],
    [0o140755, 'Srwxr-xr-x'],
    [0o020620, 'Dcrw--w----'],
    [0o060660, 'Drw-rw----'],
    [0o104755, 'urwxr-xr-x'],
    [0o102755, 'grwxr-xr-x'],
    [0o041777, 'dtrwxrwxrwx'],
    [0o100000, '----------'],
  ])('%o → %s', (mode, expected) => {
    expect(goModeString(mode)).toBe(expected);
  });
});
