import { BuildProgress, stepOfLogMessage } from './build-progress';

class Capture {
  text = '';
  columns = 80;
  rows = 30;
  constructor(readonly isTTY: boolean) {}
  write(chunk: string) {
    this.text += chunk;
    return true;
  }
}

const entry = (message: string, level = 'info') => ({ timestamp: new Date(), level, message });
const labels = ['FROM base (Dockerfile:1)', 'RUN apt-get install -y jq (Dockerfile:2)', 'ENV A=1 (Dockerfile:3)', 'finalize: snapshot'];

describe('stepOfLogMessage', () => {
  it.each([
    ['[2/5] RUN apt-get install -y jq', { step: 2, of: 5, cached: false, done: false }],
    ['[2/5] RUN apt-get install -y jq done in 3.2 s', { step: 2, of: 5, cached: false, done: true }],
    ['CACHED [3/5] COPY app.sh /srv/', { step: 3, of: 5, cached: true, done: false }],
    ['[builder 2/5] RUN true', { step: 2, of: 5, cached: false, done: false }],
    ['[step 1] RUN true', { step: 1, of: undefined, cached: false, done: false }],
    ['CACHED [step 4] ENV A=1', { step: 4, of: undefined, cached: true, done: false }],
    ['[base] template base (build 1)', { step: 0, cached: false, done: false }],
    ['CACHED [base]', { step: 0, cached: true, done: false }],
    ['[finalize] template snapshot', { step: 'finalize', cached: false, done: false }],
    ['step 3: RUN false', { step: 3, of: undefined, cached: false, done: false }],
    ['Step 2/4 CACHED', { step: 2, of: 4, cached: true, done: false }],
  ])('%s', (message, expected) => {
    expect(stepOfLogMessage(message)).toEqual(expected);
  });

  it('ignores lines that name no step', () => {
    expect(stepOfLogMessage('Uploaded app.sh')).toBeUndefined();
    expect(stepOfLogMessage('Reading package lists... [1/2 done]')).toBeUndefined();
  });
});

describe('BuildProgress', () => {
  it('streams plain log lines with elapsed time and a step summary when not on a terminal', () => {
    let now = 1_000;
    const out = new Capture(false);
    const progress = new BuildProgress('app', labels, out, false, () => now);
    progress.log(entry('Requesting build for template: app'));
    now += 500;
    progress.log(entry('CACHED [1/2] RUN apt-get install -y jq'));
    progress.log(entry('[4/4] yarn: resolving packages'));
    progress.log(entry('[2/2] ENV A=1'));
    now += 1_500;
    progress.log(entry('boom', 'error'));
    progress.fail(2);
    expect(out.text).not.toContain('\x1b[');
    expect(out.text.split('\n')).toEqual([
      'Building app: 4 steps (0..3)',
      '   0.0s Requesting build for template: app',
      '   0.5s CACHED [1/2] RUN apt-get install -y jq',
      '   0.5s [4/4] yarn: resolving packages',
      '   0.5s [2/2] ENV A=1',
      '   2.0s ERROR boom',
      '✓ [0/3] FROM base (Dockerfile:1)  0.0s',
      '✓ [1/3] RUN apt-get install -y jq (Dockerfile:2)  CACHED',
      '✗ [2/3] ENV A=1 (Dockerfile:3)  FAILED',
      '',
    ]);
  });

  it('draws a live block on a terminal, redrawing it under each log line, and ends with every step done', () => {
    const out = new Capture(true);
    const progress = new BuildProgress('app', labels, out, true);
    progress.log(entry('[step 1] RUN apt-get install -y jq'));
    progress.log(entry('Setting up jq'));
    progress.log(entry('[finalize] template snapshot'));
    progress.succeed();
    // Cursor hidden, the block moved up over and redrawn, the cursor shown again.
    expect(out.text.startsWith('\x1b[?25l')).toBe(true);
    expect(out.text).toContain('\x1b[5A\r\x1b[J');
    expect(out.text.endsWith('\x1b[?25h')).toBe(true);
    const lastFrame = out.text.slice(out.text.lastIndexOf('\x1b[J') + 3);
    const plain = lastFrame.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '');
    expect(plain).toMatch(/Building app █{20} 4\/4 .* done/);
    expect(plain).toMatch(/✓ \[1\/3\] RUN apt-get install -y jq \(Dockerfile:2\)  \d+\.\ds/);
    expect(plain).toMatch(/✓ \[3\/3\] finalize: snapshot/);
    expect(out.text).toContain('Setting up jq\n');
  });
});
