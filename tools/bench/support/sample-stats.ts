/** Nearest-rank percentile of unsorted samples. */
export function percentile(samples: number[], p: number): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

/** One aligned benchmark line: label, p50, p95 and the sample count. */
export function formatSamples(label: string, samples: number[], options: { unit?: string; digits?: number; width?: number } = {}): string {
  if (samples.length === 0) return `${label.padEnd(options.width ?? 60)} no samples`;
  const unit = options.unit ?? 'ms';
  const digits = options.digits ?? 1;
  const value = (p: number) => percentile(samples, p).toFixed(digits).padStart(9);
  return `${label.padEnd(options.width ?? 60)} p50 ${value(50)} ${unit}   p95 ${value(95)} ${unit}   (n=${samples.length})`;
}

export function report(label: string, samples: number[], options: { unit?: string; digits?: number; width?: number } = {}): void {
  console.log(formatSamples(label, samples, options));
}
