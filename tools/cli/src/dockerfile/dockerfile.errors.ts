/** A Dockerfile Kiln cannot build, located at the line of the instruction (1-based) so the user can find it. */
export class DockerfileError extends Error {
  constructor(
    readonly line: number,
    readonly reason: string,
    readonly file = 'Dockerfile',
  ) {
    super(`${file}:${line}: ${reason}`);
    this.name = new.target.name;
  }

  /** The same error named after the file the user passed (`-f path/to/Dockerfile.dev`). */
  inFile(file: string): DockerfileError {
    return new DockerfileError(this.line, this.reason, file);
  }
}
