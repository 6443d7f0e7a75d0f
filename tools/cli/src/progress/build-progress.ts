import type { StepLabels } from '../template/build-steps';

/** The part of a stream the display writes to (process.stdout, or a capture in tests). */
export interface ProgressOutput {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
  rows?: number;
}

export interface BuildLogLine {
  timestamp: Date;
  level: string;
  message: string;
}

type StepState = 'pending' | 'running' | 'done' | 'cached' | 'failed';

interface StepProgress {
  label: string;
  state: StepState;
  startedAt?: number;
  endedAt?: number;
}

/** A build log line's step: a number, or the finalisation (the last step, whatever the count). */
export interface LogStepMarker {
  step: number | 'finalize';
  /** Out of how many steps, when the line says (`[2/5]`). */
  of?: number;
  /** The step was reused from the cache. */
  cached: boolean;
  /** The line reports the step finished (`… done in 1.2 s`). */
  done: boolean;
}

/**
 * Where a build log line says the build is. The SDK hands the CLI E2B's log messages without their `step` field, so
 * the step is read from the prefix builders write: `[2/5] RUN …`, `[builder 2/5] …`, `[step 2] …`, `CACHED [2/5] …`,
 * `[base] …` (step 0), `[finalize] …` (the last step), `step 2: …`.
 */
export function stepOfLogMessage(message: string): LogStepMarker | undefined {
  const cached = /^\s*CACHED\b/.test(message) || /\bCACHED\s*$/.test(message);
  const done = /\bdone in \d/.test(message);
  const bracketed = /^\s*(?:CACHED\s+)?\[(?:[A-Za-z][\w-]*\s+)?(\d+)(?:\/(\d+))?\]/.exec(message);
  if (bracketed) return { step: Number(bracketed[1]), of: bracketed[2] ? Number(bracketed[2]) : undefined, cached, done };
  if (/^\s*(?:CACHED\s+)?\[base\]/i.test(message)) return { step: 0, cached, done };
  if (/^\s*(?:CACHED\s+)?\[finali[sz]e\]/i.test(message)) return { step: 'finalize', cached, done };
  const worded = /^\s*(?:CACHED\s+)?step (\d+)(?:\/(\d+))?\b/i.exec(message);
  if (worded) return { step: Number(worded[1]), of: worded[2] ? Number(worded[2]) : undefined, cached: cached || /\bCACHED\b/.test(message), done };
  return undefined;
}

const SPINNER = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
const ANSI = { dim: '\x1b[2m', red: '\x1b[31m', green: '\x1b[32m', yellow: '\x1b[33m', cyan: '\x1b[36m', reset: '\x1b[0m' };

/**
 * The build's progress: on a terminal a live block (one row per step with a spinner, CACHED marks and elapsed time)
 * under the streamed log; elsewhere (CI) the log lines only, each with the time since the start.
 */
export class BuildProgress {
  private readonly steps: StepProgress[];
  private readonly startedAt: number;
  private phase = 'preparing';
  private liveHeight = 0;
  private frame = 0;
  private timer: NodeJS.Timeout | undefined;
  private finished = false;

  constructor(
    private readonly title: string,
    labels: StepLabels,
    private readonly out: ProgressOutput,
    private readonly live: boolean,
    private readonly now: () => number = Date.now,
  ) {
    this.steps = labels.map((label) => ({ label, state: 'pending' }));
    this.startedAt = now();
    if (live) {
      this.out.write('\x1b[?25l');
      this.render();
      this.timer = setInterval(() => this.render(), 120);
      this.timer.unref();
    } else {
      this.out.write(`Building ${title}: ${this.steps.length} steps (0..${this.steps.length - 1})\n`);
    }
  }

  /** One SDK build log entry (the SDK's own messages and the server's). */
  log(entry: BuildLogLine): void {
    const marker = stepOfLogMessage(entry.message);
    const last = this.steps.length - 1;
    const step = marker?.step === 'finalize' ? last : marker?.step;
    // A count that is not this build's (a RUN's own "[1/4] Resolving packages…") is command output, not progress.
    const ours = marker !== undefined && step! <= last && (marker.of === undefined || marker.of === last - 1 || marker.of === last);
    if (ours) this.reachStep(step!, marker.cached, marker.done);
    else if (this.steps.every((step) => step.state === 'pending')) this.phase = entry.message;
    const line = this.formatLog(entry);
    if (this.live) this.render(line);
    else this.out.write(`${line}\n`);
  }

  /** The build is ready: every step is done. */
  succeed(): void {
    const now = this.now();
    for (const step of this.steps) {
      if (step.state === 'pending' || step.state === 'running') {
        step.state = 'done';
        step.startedAt ??= now;
        step.endedAt = now;
      }
    }
    this.stop();
  }

  /** The build failed, at `step` when the server said which. */
  fail(step?: number): void {
    if (step !== undefined && this.steps[step]) {
      this.reachStep(step, false);
      this.steps[step].state = 'failed';
      this.steps[step].endedAt = this.now();
      // Nothing after the failed step ran to the end, whatever the log suggested.
      for (const later of this.steps.slice(step + 1)) if (later.state === 'running') later.state = 'pending';
    } else {
      for (const s of this.steps) if (s.state === 'running') s.state = 'failed';
    }
    this.stop();
  }

  /** Stops the display (leaving the final state on screen) without judging the build. */
  stop(): void {
    if (this.finished) return;
    this.finished = true;
    if (this.timer) clearInterval(this.timer);
    if (this.live) {
      this.render();
      this.out.write('\x1b[?25h');
    } else {
      for (const [index, step] of this.steps.entries()) {
        if (step.state === 'pending') continue;
        this.out.write(`${this.stepText(index, step)}\n`);
      }
    }
  }

  get elapsedSeconds(): number {
    return (this.now() - this.startedAt) / 1000;
  }

  private reachStep(index: number, cached: boolean, done = false): void {
    const now = this.now();
    for (let i = 0; i < Math.min(index, this.steps.length); i++) {
      const earlier = this.steps[i];
      if (earlier.state === 'pending' || earlier.state === 'running') {
        earlier.state = 'done';
        earlier.startedAt ??= now;
        earlier.endedAt = now;
      }
    }
    const step = this.steps[index];
    if (!step || step.state === 'failed') return;
    if (cached) {
      step.state = 'cached';
      step.startedAt ??= now;
      step.endedAt = now;
    } else if (done) {
      if (step.state !== 'cached') step.state = 'done';
      step.startedAt ??= now;
      step.endedAt = now;
    } else if (step.state === 'pending') {
      step.state = 'running';
      step.startedAt = now;
    }
  }

  private formatLog(entry: BuildLogLine): string {
    const elapsed = `${this.elapsedSeconds.toFixed(1)}s`.padStart(7);
    const level = entry.level === 'info' ? '' : `${entry.level.toUpperCase()} `;
    if (!this.live) return `${elapsed} ${level}${entry.message}`;
    const colour = entry.level === 'error' ? ANSI.red : entry.level === 'warn' ? ANSI.yellow : '';
    return `${ANSI.dim}${elapsed}${ANSI.reset} ${colour}${level}${entry.message}${colour ? ANSI.reset : ''}`;
  }

  private stepText(index: number, step: StepProgress): string {
    const icon = { pending: '·', running: SPINNER[this.frame % SPINNER.length], done: '✓', cached: '✓', failed: '✗' }[step.state];
    const number = `[${index}/${this.steps.length - 1}]`;
    const seconds = step.startedAt !== undefined ? `${(((step.endedAt ?? this.now()) - step.startedAt) / 1000).toFixed(1)}s` : '';
    const mark = step.state === 'cached' ? 'CACHED' : step.state === 'failed' ? 'FAILED' : seconds;
    return `${icon} ${number} ${step.label}  ${mark}`.trimEnd();
  }

  /** Redraws the live block, first printing `logLine` above it. */
  private render(logLine?: string): void {
    this.frame++;
    // A terminal that reports no size (0, as a bare pty does) gets a usual one.
    const width = Math.max(20, (this.out.columns || 100) - 1);
    const fit = (text: string) => (text.length > width ? `${text.slice(0, width - 1)}…` : text);
    const running = this.steps.findIndex((step) => step.state === 'running');
    const done = this.steps.filter((step) => step.state === 'done' || step.state === 'cached').length;
    const barWidth = 20;
    const filled = Math.round((done / this.steps.length) * barWidth);
    const bar = `${'█'.repeat(filled)}${'░'.repeat(barWidth - filled)}`;
    const status = running >= 0 ? `step ${running}/${this.steps.length - 1}` : this.finished ? 'done' : this.phase;
    const header = `${this.finished ? ' ' : SPINNER[this.frame % SPINNER.length]} Building ${this.title} ${bar} ${done}/${this.steps.length}  ${this.elapsedSeconds.toFixed(1)}s  ${status}`;
    // Keep the block within the screen: a window of rows around the running step.
    const maxRows = Math.max(3, (this.out.rows || 40) - 3);
    let first = 0;
    if (this.steps.length > maxRows) first = Math.min(Math.max(0, (running >= 0 ? running : done) - Math.floor(maxRows / 2)), this.steps.length - maxRows);
    const visible = this.steps.slice(first, first + maxRows);
    const rows = [
      fit(header),
      ...visible.map((step, i) => {
        const colour = step.state === 'failed' ? ANSI.red : step.state === 'cached' ? ANSI.cyan : step.state === 'done' ? ANSI.green : '';
        const text = fit(`  ${this.stepText(first + i, step)}`);
        return colour ? `${colour}${text}${ANSI.reset}` : text;
      }),
    ];
    let chunk = this.liveHeight ? `\x1b[${this.liveHeight}A\r\x1b[J` : '';
    if (logLine !== undefined) chunk += `${logLine}\n`;
    chunk += `${rows.join('\n')}\n`;
    this.liveHeight = rows.length;
    this.out.write(chunk);
  }
}
