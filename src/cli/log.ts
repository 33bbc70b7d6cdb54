// Chatter for the image programs: info lines go to stderr unless -q, verbose ones need -v.
let level = 0;

/** Sets the verbosity: 0 normal, negative with each -q, positive with each -v. */
export function setVerbosity(n: number): void {
  level = n;
}

export function verbosity(): number {
  return level;
}

export function info(message: string): void {
  if (level >= 0) process.stderr.write(`${message}\n`);
}

export function verbose(message: string): void {
  if (level >= 1) process.stderr.write(`${message}\n`);
}
