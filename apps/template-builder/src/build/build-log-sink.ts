import { Logger } from '@nestjs/common';
import { TemplateBuildLogEntry, TemplateBuildLogLevel } from '@kiln/contracts';
import { describeError } from '@kiln/config';
import { TemplateBuildStore } from './template-build.store';

/** Publishes a stored log entry to whoever follows the build (NATS in the app, a recorder in tests). */
export type BuildLogPublisher = (buildId: string, entry: TemplateBuildLogEntry) => void;

/** Entries written per insert; a chatty step (apt-get) sends lines far faster than one insert each. */
const BATCH_ENTRIES = 200;
/** How long an entry may wait for others to share its insert. */
const BATCH_DELAY_MS = 200;

/**
 * One build attempt's log: numbers entries in arrival order (seq continues an earlier attempt's), stores them in
 * batches (one insert at a time, so rows land in order) and publishes each once it is stored. `close()` waits for
 * everything added before it.
 */
export class BuildLogSink {
  private readonly logger = new Logger(BuildLogSink.name);
  private pending: TemplateBuildLogEntry[] = [];
  private timer?: NodeJS.Timeout;
  /** The insert in progress; each flush chains on it so batches never overtake each other. */
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    private readonly buildId: string,
    private readonly store: TemplateBuildStore,
    private readonly publish: BuildLogPublisher,
    private nextSeq: number,
  ) {}

  static async open(buildId: string, store: TemplateBuildStore, publish: BuildLogPublisher): Promise<BuildLogSink> {
    return new BuildLogSink(buildId, store, publish, await store.nextLogSeq(buildId));
  }

  add(level: TemplateBuildLogLevel, message: string, step?: string | number, at: Date = new Date()): TemplateBuildLogEntry {
    const entry: TemplateBuildLogEntry = {
      seq: this.nextSeq++,
      timestamp: at.toISOString(),
      level,
      message,
      ...(step !== undefined ? { step: String(step) } : {}),
    };
    this.pending.push(entry);
    if (this.pending.length >= BATCH_ENTRIES) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), BATCH_DELAY_MS);
    return entry;
  }

  /** Stores (then publishes) everything added so far; resolves when it is stored. */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.pending;
    this.pending = [];
    if (!batch.length) return this.writing;
    this.writing = this.writing.then(async () => {
      try {
        await this.store.appendLogs(this.buildId, batch);
      } catch (error) {
        // Logs are a record of the build, not the build: a lost batch is reported, the build goes on.
        this.logger.warn(`build ${this.buildId}: ${batch.length} log lines not stored: ${describeError(error)}`);
      }
      for (const entry of batch) {
        try {
          this.publish(this.buildId, entry);
        } catch (error) {
          this.logger.debug(`build ${this.buildId}: log line not published: ${describeError(error)}`);
        }
      }
    });
    return this.writing;
  }

  close(): Promise<void> {
    return this.flush();
  }
}
