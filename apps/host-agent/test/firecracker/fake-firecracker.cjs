#!/usr/bin/env node
'use strict';
/**
 * A RECORDING FAKE of Firecracker's API (there is no Firecracker binary on this machine): serves HTTP on the API
 * unix socket, checks every call against the request shapes of Firecracker v1.16.1 (src/firecracker/swagger/
 * firecracker.yaml at 2038188f145fb81b8d098147a10e9d9f392fd22f) and the state rules Firecracker enforces (pre-boot
 * calls, snapshot load only on a fresh process, snapshot create only when paused), records each call with its answer,
 * and answers as Firecracker does: 204 (200 with a body for GET /), or 400 with {"fault_message"}.
 *
 * It runs "inside" the jail the fake jailer prepared: absolute paths in requests are resolved against the jail's
 * root directory, as the chrooted Firecracker would see them. It boots nothing.
 *
 * Written from the swagger by hand, independently of apps/host-agent/src/vmm/firecracker/firecracker-api.ts, so a
 * drift between the driver's types and the pinned API shows up as a 400 here.
 */
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');

// ---- Request shapes of v1.16.1 (only the definitions the endpoints below take). ----
const str = { type: 'string' };
const bool = { type: 'boolean' };
const int = (min, max) => ({ type: 'integer', min, max });
const enumOf = (...values) => ({ type: 'string', enum: values });
const TokenBucket = { type: 'object', required: ['size', 'refill_time'], properties: { size: int(0), one_time_burst: int(0), refill_time: int(0) } };
const RateLimiter = { type: 'object', required: [], properties: { bandwidth: TokenBucket, ops: TokenBucket } };
const SHAPES = {
  MachineConfiguration: {
    type: 'object',
    required: ['mem_size_mib', 'vcpu_count'],
    properties: {
      cpu_template: enumOf('C3', 'T2', 'T2S', 'T2CL', 'T2A', 'V1N1', 'None'),
      smt: bool,
      mem_size_mib: int(1),
      track_dirty_pages: bool,
      vcpu_count: int(1, 32),
      huge_pages: enumOf('None', '2M'),
    },
  },
  BootSource: { type: 'object', required: ['kernel_image_path'], properties: { boot_args: str, initrd_path: str, kernel_image_path: str } },
  Drive: {
    type: 'object',
    required: ['drive_id', 'is_root_device'],
    properties: {
      drive_id: str,
      partuuid: str,
      is_root_device: bool,
      cache_type: enumOf('Unsafe', 'Writeback'),
      is_read_only: bool,
      path_on_host: str,
      rate_limiter: RateLimiter,
      io_engine: enumOf('Sync', 'Async'),
      socket: str,
    },
  },
  NetworkInterface: {
    type: 'object',
    required: ['host_dev_name', 'iface_id'],
    properties: { guest_mac: str, host_dev_name: str, iface_id: str, mtu: int(68, 65535), rx_rate_limiter: RateLimiter, tx_rate_limiter: RateLimiter },
  },
  InstanceActionInfo: { type: 'object', required: ['action_type'], properties: { action_type: enumOf('FlushMetrics', 'InstanceStart', 'SendCtrlAltDel') } },
  Vm: { type: 'object', required: ['state'], properties: { state: enumOf('Paused', 'Resumed') } },
  SnapshotCreateParams: {
    type: 'object',
    required: ['mem_file_path', 'snapshot_path'],
    properties: { mem_file_path: str, snapshot_path: str, snapshot_type: enumOf('Full', 'Diff') },
  },
  SnapshotLoadParams: {
    type: 'object',
    required: ['snapshot_path'],
    properties: {
      enable_diff_snapshots: bool,
      track_dirty_pages: bool,
      mem_file_path: str,
      mem_backend: { type: 'object', required: ['backend_type', 'backend_path'], properties: { backend_type: enumOf('File', 'Uffd'), backend_path: str } },
      snapshot_path: str,
      resume_vm: bool,
      network_overrides: { type: 'array', items: { type: 'object', required: ['iface_id', 'host_dev_name'], properties: { iface_id: str, host_dev_name: str } } },
      vsock_override: { type: 'object', required: ['uds_path'], properties: { uds_path: str } },
      clock_realtime: bool,
    },
  },
  Logger: {
    type: 'object',
    required: [],
    properties: { level: enumOf('Error', 'Warning', 'Info', 'Debug', 'Trace', 'Off'), log_path: str, show_level: bool, show_log_origin: bool, module: str },
  },
  Metrics: { type: 'object', required: ['metrics_path'], properties: { metrics_path: str } },
};

/** Problems of `value` against `shape`, each naming the field: types, required fields, enums, ranges, unknown fields. */
function check(value, shape, where) {
  if (shape.type === 'object') {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return [`${where} must be an object`];
    const problems = [];
    for (const name of shape.required) if (!(name in value)) problems.push(`${where}.${name} is required`);
    for (const [name, field] of Object.entries(value)) {
      const fieldShape = shape.properties[name];
      if (!fieldShape) problems.push(`${where}.${name} is not a field of this request (unknown field)`);
      else problems.push(...check(field, fieldShape, `${where}.${name}`));
    }
    return problems;
  }
  if (shape.type === 'array') {
    if (!Array.isArray(value)) return [`${where} must be an array`];
    return value.flatMap((item, i) => check(item, shape.items, `${where}[${i}]`));
  }
  if (shape.type === 'integer') {
    if (!Number.isInteger(value)) return [`${where} must be an integer`];
    if (shape.min !== undefined && value < shape.min) return [`${where} must be at least ${shape.min}`];
    if (shape.max !== undefined && value > shape.max) return [`${where} must be at most ${shape.max}`];
    return [];
  }
  if (typeof value !== shape.type) return [`${where} must be a ${shape.type}`];
  if (shape.enum && !shape.enum.includes(value)) return [`${where} must be one of ${shape.enum.join(', ')}`];
  return [];
}

/** Endpoints of v1.16.1 the driver may call: method, path pattern, body definition (none for GET). */
const ROUTES = [
  { method: 'GET', pattern: /^\/$/, name: 'describeInstance' },
  { method: 'PUT', pattern: /^\/machine-config$/, body: 'MachineConfiguration', preBoot: true },
  { method: 'PUT', pattern: /^\/boot-source$/, body: 'BootSource', preBoot: true },
  { method: 'PUT', pattern: /^\/drives\/([^/]+)$/, body: 'Drive', preBoot: true, idField: 'drive_id' },
  { method: 'PUT', pattern: /^\/network-interfaces\/([^/]+)$/, body: 'NetworkInterface', preBoot: true, idField: 'iface_id' },
  { method: 'PUT', pattern: /^\/actions$/, body: 'InstanceActionInfo' },
  { method: 'PATCH', pattern: /^\/vm$/, body: 'Vm' },
  { method: 'PUT', pattern: /^\/snapshot\/create$/, body: 'SnapshotCreateParams' },
  { method: 'PUT', pattern: /^\/snapshot\/load$/, body: 'SnapshotLoadParams' },
  { method: 'PUT', pattern: /^\/logger$/, body: 'Logger' },
  { method: 'PUT', pattern: /^\/metrics$/, body: 'Metrics' },
];

/**
 * The guest pages a Diff snapshot "dirtied": [page, fill] pairs. Firecracker writes a Diff's memory file as a sparse
 * file of the guest's size with each dirtied page at its own offset and holes elsewhere; the fake does the same with
 * these pages. Page content: `fill` repeated, the page number as u32 LE in its first 4 bytes; fill 0 is a page the
 * guest zeroed (written zeros, not a hole). control.diffWrites = [[[page, fill], ...], ...] gives the pages of each
 * successive Diff of the VM (none after the list ends); without it every Diff writes DEFAULT_DIFF_WRITES.
 */
const DEFAULT_DIFF_WRITES = [
  [0, 0x11],
  [1, 0x11],
  [5, 0],
  [300, 0x22],
];

function diffPageBytes(page, fill) {
  const bytes = Buffer.alloc(4096, fill);
  if (fill !== 0) bytes.writeUInt32LE(page, 0);
  return bytes;
}

/**
 * Runs the fake as the jailed Firecracker. `args`: Firecracker's own arguments (--id=..., --api-sock PATH);
 * `jail`: { rootDir, recordPath, control } from the fake jailer.
 */
function runFakeFirecracker(args, jail) {
  const option = (name) => {
    const i = args.findIndex((a) => a === name || a.startsWith(`${name}=`));
    if (i < 0) return undefined;
    return args[i].includes('=') ? args[i].slice(name.length + 1) : args[i + 1];
  };
  const id = option('--id');
  const apiSock = option('--api-sock') ?? '/run/firecracker.socket';
  const control = jail.control ?? {};
  const inJail = (p) => path.join(jail.rootDir, p);
  const record = (entry) => fs.appendFileSync(jail.recordPath, `${JSON.stringify({ who: 'firecracker', ...entry })}\n`);

  if (control.exitEarly) {
    process.stderr.write('fake-firecracker: injected early exit (control.exitEarly)\n');
    record({ event: 'exit-early' });
    process.exit(1);
  }
  if (control.noSocket) {
    record({ event: 'no-socket' });
    // Stays up without ever listening, like a Firecracker stuck before its API thread.
    setInterval(() => undefined, 1 << 30);
    return;
  }

  const vm = { started: false, loaded: false, configured: new Set(), state: 'Not started', machine: { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: false }, dirtyTracking: false, diffs: 0 };
  const fileExists = (p) => typeof p === 'string' && path.isAbsolute(p) && fs.existsSync(inJail(p));

  /** The state rules and file checks Firecracker applies; returns a fault message or undefined. */
  function semantics(route, method, url, body) {
    const key = `${method} ${url}`;
    if (route.preBoot && (vm.started || vm.loaded)) return `The requested operation is not supported after starting the microVM.`;
    if (route.idField && decodeURIComponent(url.match(route.pattern)[1]) !== body[route.idField]) {
      return `The id from the path does not match the id from the body!`;
    }
    if (key === 'PUT /boot-source') {
      if (!fileExists(body.kernel_image_path)) return `Cannot open kernel image ${body.kernel_image_path}: No such file or directory`;
      if (body.initrd_path !== undefined && !fileExists(body.initrd_path)) return `Cannot open initrd ${body.initrd_path}`;
    }
    if (route.body === 'Drive') {
      if (body.socket !== undefined) return 'vhost-user-block is not what Kiln configures';
      if (body.path_on_host === undefined || body.is_read_only === undefined) return 'path_on_host and is_read_only are required for a virtio-block drive';
      if (!fileExists(body.path_on_host)) return `Unable to open the block device backing file ${body.path_on_host}`;
    }
    if (route.body === 'InstanceActionInfo') {
      if (body.action_type === 'InstanceStart') {
        if (vm.started || vm.loaded) return 'The microVM is already running.';
        if (!vm.configured.has('boot-source')) return 'Cannot start microvm without kernel configuration.';
      } else if (body.action_type === 'SendCtrlAltDel' && vm.state !== 'Running') {
        return 'SendCtrlAltDel needs a running microVM.';
      }
    }
    if (route.body === 'Vm' && !(vm.started || vm.loaded)) return 'The microVM is not running (Paused/Resumed need a started or loaded VM).';
    if (route.body === 'SnapshotCreateParams') {
      if (!(vm.started || vm.loaded)) return 'Cannot create a snapshot of a microVM that is not running.';
      if (vm.state !== 'Paused') return 'Cannot save the microVM state: the microVM must be paused.';
      if (body.snapshot_type === 'Diff' && !vm.dirtyTracking) return 'Diff snapshots require dirty page tracking (track_dirty_pages).';
      for (const p of [body.snapshot_path, body.mem_file_path]) {
        if (!path.isAbsolute(p) || !fs.existsSync(path.dirname(inJail(p)))) return `Cannot create snapshot file ${p}`;
      }
    }
    if (route.body === 'SnapshotLoadParams') {
      if (vm.started || vm.loaded || vm.configured.size > 0) return 'Loading a microVM snapshot not allowed after configuring boot-specific resources.';
      if ((body.mem_backend === undefined) === (body.mem_file_path === undefined)) return 'exactly one of mem_backend and mem_file_path must be given';
      if (!fileExists(body.snapshot_path)) return `Cannot open snapshot file ${body.snapshot_path}`;
      const backend = body.mem_backend;
      if (backend?.backend_type === 'Uffd') {
        let isSocket = false;
        try {
          isSocket = fs.statSync(inJail(backend.backend_path)).isSocket();
        } catch {
          isSocket = false;
        }
        if (!isSocket) return `Cannot connect to UDS in order to send information on handling guest memory page-faults: ${backend.backend_path}`;
      } else if (backend && !fileExists(backend.backend_path)) {
        return `Cannot open the memory file ${backend.backend_path}`;
      }
    }
    return undefined;
  }

  /** What a successful call changes. */
  function apply(route, body) {
    switch (route.body) {
      case 'MachineConfiguration':
        vm.machine = { ...body };
        vm.dirtyTracking = body.track_dirty_pages === true;
        vm.configured.add('machine-config');
        break;
      case 'BootSource':
        vm.configured.add('boot-source');
        break;
      case 'Drive':
        vm.configured.add(`drive:${body.drive_id}`);
        break;
      case 'NetworkInterface':
        vm.configured.add(`net:${body.iface_id}`);
        break;
      case 'InstanceActionInfo':
        if (body.action_type === 'InstanceStart') {
          vm.started = true;
          vm.state = 'Running';
        }
        break;
      case 'Vm':
        vm.state = body.state === 'Paused' ? 'Paused' : 'Running';
        break;
      case 'SnapshotCreateParams':
        fs.writeFileSync(inJail(body.snapshot_path), `fake vmstate (${body.snapshot_type ?? 'Full'})\n`);
        // Guest RAM size, sparse: a Full snapshot's memory file is the guest's size; a Diff one too, with the dirtied
        // pages written at their offsets (holes elsewhere). Taking a snapshot restarts the dirty log.
        fs.writeFileSync(inJail(body.mem_file_path), '');
        fs.truncateSync(inJail(body.mem_file_path), vm.machine.mem_size_mib * 1024 * 1024);
        if (body.snapshot_type === 'Diff') {
          const writes = control.diffWrites ? (control.diffWrites[vm.diffs] ?? []) : DEFAULT_DIFF_WRITES;
          vm.diffs += 1;
          const fd = fs.openSync(inJail(body.mem_file_path), 'r+');
          try {
            for (const [page, fill] of writes) fs.writeSync(fd, diffPageBytes(page, fill), 0, 4096, page * 4096);
          } finally {
            fs.closeSync(fd);
          }
        }
        break;
      case 'SnapshotLoadParams':
        vm.loaded = true;
        vm.dirtyTracking = body.track_dirty_pages === true || body.enable_diff_snapshots === true;
        vm.state = body.resume_vm ? 'Running' : 'Paused';
        break;
      default:
        break;
    }
  }

  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const method = req.method;
      const url = req.url;
      const text = Buffer.concat(chunks).toString('utf8');
      const answer = (status, payload, extra = {}) => {
        record({ method, path: url, body: parsedBody, status, ...(payload && status >= 400 ? { fault: payload.fault_message } : {}), ...extra });
        if (payload === undefined) {
          res.writeHead(status);
          res.end();
        } else {
          const out = JSON.stringify(payload);
          res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(out) });
          res.end(out);
        }
      };
      let parsedBody;
      const route = ROUTES.find((r) => r.method === method && r.pattern.test(url));
      if (!route) return answer(400, { fault_message: `Invalid request method and/or path: ${method} ${url}.` });
      if (route.body) {
        if (req.headers['content-type'] !== 'application/json') return answer(400, { fault_message: 'Content-Type must be application/json' });
        try {
          parsedBody = JSON.parse(text);
        } catch (error) {
          return answer(400, { fault_message: `An error occurred when deserializing the json body of a request: ${error.message}` });
        }
        const problems = check(parsedBody, SHAPES[route.body], route.body);
        if (problems.length > 0) return answer(400, { fault_message: `request does not match ${route.body} of v1.16.1: ${problems.join('; ')}` }, { shapeProblems: problems });
      } else if (text.length > 0) {
        return answer(400, { fault_message: 'GET takes no body' });
      }
      if (control.failAt === `${method} ${url}`) {
        return answer(400, { fault_message: `fake: injected failure at ${method} ${url}` });
      }
      if (route.name === 'describeInstance') {
        return answer(200, { app_name: 'Firecracker', id, state: vm.state, vmm_version: '1.16.1' });
      }
      const fault = semantics(route, method, url, parsedBody);
      if (fault) return answer(400, { fault_message: fault });
      const extra = {};
      if (route.body === 'SnapshotLoadParams' && parsedBody.mem_backend?.backend_type === 'Uffd') extra.backendIsSocket = true;
      apply(route, parsedBody);
      answer(204, undefined, extra);
      if (route.body === 'InstanceActionInfo' && parsedBody.action_type === 'SendCtrlAltDel') {
        // The guest reboots (reboot=k), on which Firecracker exits.
        setTimeout(() => process.exit(0), 20);
      }
    });
  });
  const socketPath = inJail(apiSock);
  fs.mkdirSync(path.dirname(socketPath), { recursive: true });
  fs.rmSync(socketPath, { force: true });
  server.listen(socketPath, () => record({ event: 'listening', apiSock, pid: process.pid }));
  process.on('SIGTERM', () => process.exit(0));
}

module.exports = { runFakeFirecracker, SHAPES, check, DEFAULT_DIFF_WRITES, diffPageBytes };

if (require.main === module) {
  process.stderr.write('fake-firecracker: run through the fake jailer (it supplies the jail)\n');
  process.exit(1);
}
