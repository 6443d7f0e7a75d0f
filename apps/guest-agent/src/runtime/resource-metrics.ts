import { statfs } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

interface CpuSample {
  busy: number;
  total: number;
}

function readCpuSample(): CpuSample {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0];
  const fields = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest time is already inside user/nice).
  const [user, nice, system, idle, iowait = 0, irq = 0, softirq = 0, steal = 0] = fields;
  const idleAll = idle + iowait;
  const total = user + nice + system + idleAll + irq + softirq + steal;
  return { busy: total - idleAll, total };
}

function readMeminfo(): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of readFileSync('/proc/meminfo', 'utf8').split('\n')) {
    const match = /^(\w+):\s+(\d+)\s*kB/.exec(line);
    if (match) values.set(match[1], Number(match[2]) * 1024);
  }
  return values;
}

/**
 * GET /metrics with envd's field names. CPU use is measured between consecutive calls (as gopsutil's
 * cpu.Percent(0) does), from /proc/stat rather than timers, so a snapshot pause does not skew it.
 */
export class ResourceMetrics {
  private lastCpu = readCpuSample();

  async collect(): Promise<Record<string, number>> {
    const cpu = readCpuSample();
    const busy = cpu.busy - this.lastCpu.busy;
    const total = cpu.total - this.lastCpu.total;
    this.lastCpu = cpu;
    const mem = readMeminfo();
    const memTotal = mem.get('MemTotal') ?? 0;
    const memUsed = memTotal - (mem.get('MemAvailable') ?? mem.get('MemFree') ?? 0);
    const disk = await statfs('/');
    const diskTotal = disk.blocks * disk.bsize;
    const diskUsed = (disk.blocks - disk.bfree) * disk.bsize;
    return {
      ts: Math.floor(Date.now() / 1000),
      cpu_count: availableParallelism(),
      cpu_used_pct: total > 0 ? Math.round((busy / total) * 10000) / 100 : 0,
      mem_total: memTotal,
      mem_used: memUsed,
      mem_cache: mem.get('Cached') ?? 0,
      mem_total_mib: Math.floor(memTotal / (1024 * 1024)),
      mem_used_mib: Math.floor(memUsed / (1024 * 1024)),
      disk_used: diskUsed,
      disk_total: diskTotal,
    };
  }
}
