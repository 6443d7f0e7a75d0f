/** A command line Kiln cannot run (unknown option, missing value): exit code 2, with the usage hint. */
export class CliUsageError extends Error {
  constructor(
    message: string,
    /** The help topic to point at (`kiln template build --help`). */
    readonly helpCommand = 'kiln --help',
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** A template file that cannot be loaded or does not export a Template. */
export class TemplateFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The connection settings (API key, URL) are missing or unusable. */
export class ConnectionConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}
