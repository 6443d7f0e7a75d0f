/*
 * uffd-harness: plays Firecracker's side of the UFFD protocol against the real kiln-uffd-worker process.
 *
 * Per case it writes a snapshot directory (template or checkpoint layout), spawns the worker, and in a forked child
 * (the "VMM") creates a real userfaultfd with the features Firecracker requests, maps and registers guest memory
 * regions, sends the handshake (regions JSON + the uffd over SCM_RIGHTS), touches the pages from several threads at
 * once and compares every byte with the guest RAM the snapshot describes. The parent checks the worker's counters and
 * how it ends. Failure cases each run their intact control first.
 *
 *   uffd-harness --worker PATH [--sanitized] [--only N[,N...]] [--worker-wrapper "CMD ARGS"]
 *                                                                 the suite (TAP-like lines, then "N passed, N failed")
 *   uffd-harness --worker PATH --bench [--pages N] [--threads T]   one JSON line of figures
 */
#define _GNU_SOURCE
/* Failure messages quote the worker's stderr and are cut to fit on purpose. */
#pragma GCC diagnostic ignored "-Wformat-truncation"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <openssl/evp.h>
#include <poll.h>
#include <setjmp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define MIB (1024u * 1024u)

static const char *worker_path;
/* --worker-wrapper "valgrind -q ...": words run in front of the worker (same pid: the wrapper must exec in place). */
static char *wrapper_words[16];
static int nwrapper;
static int sanitized;
static char root[256];
static char case_error[1024];
static int case_counter;

#define CHECK(cond, ...)                                                  \
  do {                                                                    \
    if (!(cond)) {                                                        \
      snprintf(case_error, sizeof case_error, __VA_ARGS__);               \
      return -1;                                                          \
    }                                                                     \
  } while (0)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- snapshot directories ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static void fill_random(uint8_t *p, size_t len) {
  for (size_t i = 0; i + 8 <= len; i += 8) {
    uint64_t v = rng() | 1; /* never an all-zero page by chance */
    memcpy(p + i, &v, 8);
  }
}

static void sha256_hex(const uint8_t *data, size_t len, char out[65]) {
  unsigned char digest[32];
  unsigned int n = 0;
  EVP_Digest(data, len, digest, &n, EVP_sha256(), NULL);
  for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

static void write_file(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "we");
  if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
    fprintf(stderr, "harness: cannot write %s\n", path);
    exit(3);
  }
}

static int page_is_zero(const uint8_t *p) {
  for (unsigned i = 0; i < PAGE; i++)
    if (p[i]) return 0;
  return 1;
}

struct snapshot {
  char dir[512];
  uint8_t *expected; /* guest RAM as the worker must serve it */
  uint64_t pages;
  uint64_t zero_pages;
};

static uint64_t count_zero_pages(const uint8_t *mem, uint64_t pages) {
  uint64_t n = 0;
  for (uint64_t p = 0; p < pages; p++) n += (uint64_t)page_is_zero(mem + p * PAGE);
  return n;
}

/* Template layout: DIR/memory (random pages, every 7th page and a 32-page run zero) + manifest files.memory. */
static void make_template(struct snapshot *s, const char *name, uint64_t pages) {
  snprintf(s->dir, sizeof s->dir, "%s/%s", root, name);
  mkdir(s->dir, 0755);
  s->pages = pages;
  s->expected = malloc(pages * PAGE);
  fill_random(s->expected, pages * PAGE);
  for (uint64_t p = 3; p < pages; p += 7) memset(s->expected + p * PAGE, 0, PAGE);
  memset(s->expected + (pages / 2) * PAGE, 0, 32 * PAGE);
  s->zero_pages = count_zero_pages(s->expected, pages);
  char path[600], sha[65], manifest[1024];
  snprintf(path, sizeof path, "%s/memory", s->dir);
  write_file(path, s->expected, pages * PAGE);
  sha256_hex(s->expected, pages * PAGE, sha);
  snprintf(manifest, sizeof manifest,
           "{\"formatVersion\":8,\"templateId\":\"harness\",\"buildId\":\"b1\",\"memoryMib\":%llu,"
           "\"files\":{\"memory\":{\"bytes\":%llu,\"sha256\":\"%s\"}}}",
           (unsigned long long)(pages * PAGE / MIB), (unsigned long long)(pages * PAGE), sha);
  snprintf(path, sizeof path, "%s/manifest.json", s->dir);
  write_file(path, manifest, strlen(manifest));
}

/*
 * Checkpoint layout over `base` (a template, or NULL for the all-zero base): memory.pages at memory.index runs, among
 * them a run inside the base's zero run and an all-zero page over a non-zero base page.
 */
static void make_checkpoint(struct snapshot *s, const char *name, const struct snapshot *base, uint64_t pages) {
  snprintf(s->dir, sizeof s->dir, "%s/%s", root, name);
  mkdir(s->dir, 0755);
  s->pages = pages;
  s->expected = calloc(pages, PAGE);
  if (base) memcpy(s->expected, base->expected, pages * PAGE);
  const uint32_t runs[][2] = {{1, 3}, {40, 10}, {(uint32_t)pages / 2 + 8, 16}, {(uint32_t)pages / 2 + 40, 1}, {(uint32_t)pages - 4, 4}};
  const size_t nruns = sizeof runs / sizeof runs[0];
  uint64_t overlay_pages = 0;
  for (size_t r = 0; r < nruns; r++) overlay_pages += runs[r][1];
  uint8_t *overlay = malloc(overlay_pages * PAGE), index[sizeof runs];
  fill_random(overlay, overlay_pages * PAGE);
  memset(overlay + 13 * PAGE, 0, PAGE); /* inside run {40,10}: page 42 becomes zero over a random base page */
  uint64_t slot = 0;
  for (size_t r = 0; r < nruns; r++) {
    for (int b = 0; b < 4; b++) {
      index[r * 8 + b] = (uint8_t)(runs[r][0] >> (8 * b));
      index[r * 8 + 4 + b] = (uint8_t)(runs[r][1] >> (8 * b));
    }
    for (uint32_t k = 0; k < runs[r][1]; k++, slot++) memcpy(s->expected + (runs[r][0] + k) * (uint64_t)PAGE, overlay + slot * PAGE, PAGE);
  }
  s->zero_pages = count_zero_pages(s->expected, pages);
  char path[600], pages_sha[65], index_sha[65], identity[128], manifest[4096];
  snprintf(path, sizeof path, "%s/memory.pages", s->dir);
  write_file(path, overlay, overlay_pages * PAGE);
  snprintf(path, sizeof path, "%s/memory.index", s->dir);
  write_file(path, index, sizeof index);
  sha256_hex(overlay, overlay_pages * PAGE, pages_sha);
  sha256_hex(index, sizeof index, index_sha);
  if (base) {
    char sha[65];
    sha256_hex(base->expected, pages * PAGE, sha);
    snprintf(identity, sizeof identity, "sha256:%s", sha);
  } else {
    snprintf(identity, sizeof identity, "zero:%llu", (unsigned long long)(pages * PAGE));
  }
  snprintf(manifest, sizeof manifest,
           "{\"formatVersion\":1,\"id\":\"%s\",\"kind\":\"pause\",\"sourceSandboxId\":\"s1\",\"teamId\":\"t1\",\"templateId\":\"harness\","
           "\"buildId\":\"b1\",\"keepMemory\":true,\"vm\":{\"vcpus\":1,\"memoryMib\":%llu,\"kernelPath\":\"\",\"initrdPath\":\"\","
           "\"kernelArgs\":\"\",\"memoryFilePath\":\"%s/memory\",\"memoryFileIdentity\":\"%s\",\"guestMac\":\"\",\"accelerator\":\"kvm\","
           "\"guestAgentPort\":49983},\"files\":{\"memory.pages\":{\"bytes\":%llu,\"sha256\":\"%s\"},"
           "\"memory.index\":{\"bytes\":%zu,\"sha256\":\"%s\"}},\"createdAt\":\"2026-01-01T00:00:00Z\",\"timings\":{}}",
           name, (unsigned long long)(pages * PAGE / MIB), base ? base->dir : "/nonexistent", identity,
           (unsigned long long)(overlay_pages * PAGE), pages_sha, sizeof index, index_sha);
  snprintf(path, sizeof path, "%s/manifest.json", s->dir);
  write_file(path, manifest, strlen(manifest));
  free(overlay);
}

/* ---- the worker process ---- */

struct worker {
  pid_t pid;
  int out_fd, err_fd;
  char sock[600], stats[600];
  char out[8192], err[8192];
  size_t out_len, err_len;
  int status; /* waitpid status once reaped */
  int reaped;
};

static void drain(int fd, char *buf, size_t *len, size_t cap) {
  for (;;) {
    ssize_t n = read(fd, buf + *len, cap - 1 - *len);
    if (n <= 0) break;
    *len += (size_t)n;
    buf[*len] = '\0';
  }
}

static void spawn_worker(struct worker *w, const char *snapshot_dir, const char *prefetch) {
  memset(w, 0, sizeof *w);
  int id = ++case_counter;
  snprintf(w->sock, sizeof w->sock, "%s/w%d.sock", root, id);
  snprintf(w->stats, sizeof w->stats, "%s/w%d.stats", root, id);
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) exit(3);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(err[1], 2);
    const char *argv[10 + 16] = {NULL};
    int n = 0;
    for (int i = 0; i < nwrapper; i++) argv[n++] = wrapper_words[i];
    const char *own[] = {worker_path, "--socket", w->sock, "--snapshot", snapshot_dir, "--stats-socket", w->stats};
    for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) argv[n++] = own[i];
    if (prefetch) {
      argv[n++] = "--prefetch";
      argv[n++] = prefetch;
    }
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  w->pid = pid;
  w->out_fd = out[0];
  w->err_fd = err[0];
  fcntl(w->out_fd, F_SETFL, O_NONBLOCK);
  fcntl(w->err_fd, F_SETFL, O_NONBLOCK);
}

/* Waits up to `ms` for the worker to exit; returns 1 when it did (w->status set). */
static int wait_worker(struct worker *w, unsigned ms) {
  uint64_t deadline = now_ns() + (uint64_t)ms * 1000000ull;
  while (!w->reaped) {
    drain(w->out_fd, w->out, &w->out_len, sizeof w->out);
    drain(w->err_fd, w->err, &w->err_len, sizeof w->err);
    if (waitpid(w->pid, &w->status, WNOHANG) == w->pid) {
      w->reaped = 1;
      break;
    }
    if (now_ns() > deadline) return 0;
    sleep_ms(2);
  }
  drain(w->out_fd, w->out, &w->out_len, sizeof w->out);
  drain(w->err_fd, w->err, &w->err_len, sizeof w->err);
  return 1;
}

/* Returns 1 on `ready`, 0 when the worker exited first (or timed out: then it is killed). */
static int await_ready(struct worker *w) {
  uint64_t deadline = now_ns() + 30000000000ull;
  while (now_ns() < deadline) {
    drain(w->out_fd, w->out, &w->out_len, sizeof w->out);
    if (strncmp(w->out, "ready\n", 6) == 0) return 1;
    if (wait_worker(w, 0)) return 0;
    sleep_ms(2);
  }
  kill(w->pid, SIGKILL);
  wait_worker(w, 5000);
  return 0;
}

static void end_worker(struct worker *w) {
  if (!w->reaped) {
    kill(w->pid, SIGKILL);
    wait_worker(w, 5000);
  }
  close(w->out_fd);
  close(w->err_fd);
}

static int exit_code(const struct worker *w) { return WIFEXITED(w->status) ? WEXITSTATUS(w->status) : 128 + WTERMSIG(w->status); }

static int path_exists(const char *p) {
  struct stat st;
  return lstat(p, &st) == 0;
}

/* A clean end: exit 0, nothing on stderr (a sanitizer report would be there), both sockets removed. */
static int check_clean_exit(struct worker *w, unsigned within_ms) {
  CHECK(wait_worker(w, within_ms), "worker still running %u ms after its peer went away", within_ms);
  CHECK(exit_code(w) == 0, "worker exited %d, stderr: %s", exit_code(w), w->err);
  CHECK(w->err_len == 0, "worker wrote to stderr: %s", w->err);
  CHECK(!path_exists(w->sock) && !path_exists(w->stats), "worker left its sockets behind");
  return 0;
}

/* A refusal: exit 2 and exactly one line `kiln-uffd-worker: ...` containing `needle`, no sockets left. */
static int check_refusal(struct worker *w, const char *needle) {
  CHECK(wait_worker(w, 30000), "worker did not exit");
  CHECK(exit_code(w) == 2, "worker exited %d (want 2), stderr: %s", exit_code(w), w->err);
  CHECK(strncmp(w->err, "kiln-uffd-worker: ", 18) == 0, "stderr does not start with kiln-uffd-worker: %s", w->err);
  CHECK(w->err_len > 0 && w->err[w->err_len - 1] == '\n' && strchr(w->err, '\n') == w->err + w->err_len - 1, "stderr is not one line: %s",
        w->err);
  CHECK(strstr(w->err, needle), "stderr does not mention %s: %s", needle, w->err);
  CHECK(!path_exists(w->sock) && !path_exists(w->stats), "refusing worker left a socket behind");
  return 0;
}

struct worker_stats {
  char state[16];
  uint64_t faults, copied_pages, zero_pages, bytes_copied, prefetched_pages, removed_pages, eexist;
  uint64_t counts[12], sum, count;
};

static uint64_t num(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsNumber(v) ? (uint64_t)v->valuedouble : UINT64_MAX;
}

static int parse_stats(const char *line, struct worker_stats *s) {
  cJSON *j = cJSON_Parse(line);
  if (!j) return -1;
  const cJSON *state = cJSON_GetObjectItemCaseSensitive(j, "state");
  snprintf(s->state, sizeof s->state, "%s", cJSON_IsString(state) ? state->valuestring : "?");
  s->faults = num(j, "faults");
  s->copied_pages = num(j, "copied_pages");
  s->zero_pages = num(j, "zero_pages");
  s->bytes_copied = num(j, "bytes_copied");
  s->prefetched_pages = num(j, "prefetched_pages");
  s->removed_pages = num(j, "removed_pages");
  s->eexist = num(j, "eexist");
  const cJSON *lat = cJSON_GetObjectItemCaseSensitive(j, "latency_us");
  const cJSON *counts = cJSON_GetObjectItemCaseSensitive(lat, "counts");
  int ok = cJSON_GetArraySize(counts) == 12 && cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(lat, "le")) == 11;
  for (int i = 0; ok && i < 12; i++) s->counts[i] = (uint64_t)cJSON_GetArrayItem(counts, i)->valuedouble;
  s->sum = num(lat, "sum");
  s->count = num(lat, "count");
  cJSON_Delete(j);
  return ok ? 0 : -1;
}

static int fetch_stats(const char *path, struct worker_stats *s) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path);
  if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    close(fd);
    return -1;
  }
  char line[2048];
  size_t len = 0;
  for (ssize_t n; (n = read(fd, line + len, sizeof line - 1 - len)) > 0;) len += (size_t)n;
  close(fd);
  line[len] = '\0';
  if (len == 0 || line[len - 1] != '\n' || strchr(line, '\n') != line + len - 1) return -1;
  return parse_stats(line, s);
}

/* ---- the VMM side (forked child) ---- */

struct region_spec {
  uint64_t offset, pages;
};

struct peer_plan {
  const struct snapshot *snap;
  const char *sock;
  const char *stats;
  struct region_spec regions[4];
  int nregions;
  int threads;
  unsigned touch_delay_us; /* per page: a slow restore the parent can interrupt */
  uint64_t balloon_first, balloon_pages; /* region 0 page range given back with MADV_DONTNEED, then touched again */
  uint64_t prefetch_expected;            /* wait for the worker to have prefetched this many pages before touching */
  const struct region_spec *prefetched;  /* the guest page runs prefetched (checked present before any touch) */
  int nprefetched;
  int remap; /* move region 0 (mremap) after the handshake, before touching */
  int unmap_scenario; /* EVENT_UNMAP: munmap parts of region 0 mid-restore (see unmap_scenario()) */
  int fork_scenario;  /* EVENT_FORK: fork a child mid-restore (see fork_scenario()) */
  pid_t worker_pid;   /* for /proc/<pid>/fd (fork scenario) */
  int bench; /* disjoint pages per thread, each first touch timed */
  const char *raw_handshake; /* send this instead of the real JSON (bad handshake cases) */
  int send_no_fd;
};

/* Lives in MAP_SHARED memory: the child reports through it, the parent tells it when to exit. */
struct peer_report {
  _Atomic int phase; /* 1 = handshake sent, 2 = touched and verified, 3 = failed */
  _Atomic int may_exit;
  _Atomic uint64_t touched;
  char message[512];
  uint64_t mismatched_pages, first_mismatch;
  uint64_t wall_ns;
  uint64_t latency_ns[]; /* bench: one per page */
};

static struct peer_report *report;

struct toucher {
  uint8_t *base[4];
  const struct peer_plan *plan;
  int index;
};

static volatile uint8_t touch_sink;

static void *touch_thread(void *arg) {
  struct toucher *t = arg;
  const struct peer_plan *plan = t->plan;
  for (int r = 0; r < plan->nregions; r++) {
    uint64_t pages = plan->regions[r].pages;
    if (plan->bench) {
      for (uint64_t p = (uint64_t)t->index; p < pages; p += (uint64_t)plan->threads) {
        uint64_t t0 = now_ns();
        touch_sink = t->base[r][p * PAGE + (p * 64) % PAGE];
        report->latency_ns[plan->regions[r].offset / PAGE + p] = now_ns() - t0;
      }
      continue;
    }
    /* Threads pair up on the same starting page, so the same page faults from two threads at once. */
    uint64_t start = (uint64_t)(t->index / 2) * pages / (uint64_t)((plan->threads + 1) / 2);
    for (uint64_t i = 0; i < pages; i++) {
      uint64_t p = (start + i) % pages;
      touch_sink = t->base[r][p * PAGE + (p * 64) % PAGE];
      atomic_fetch_add(&report->touched, 1);
      if (plan->touch_delay_us) usleep(plan->touch_delay_us);
    }
  }
  return NULL;
}

static void touch_all(struct toucher *proto) {
  pthread_t threads[64];
  struct toucher t[64];
  for (int i = 0; i < proto->plan->threads; i++) {
    t[i] = *proto;
    t[i].index = i;
    pthread_create(&threads[i], NULL, touch_thread, &t[i]);
  }
  for (int i = 0; i < proto->plan->threads; i++) pthread_join(threads[i], NULL);
}

static int peer_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(report->message, sizeof report->message, fmt, ap);
  va_end(ap);
  atomic_store(&report->phase, 3);
  return 1;
}

/* 1 when the page at `addr` is resident (pagemap bit 63), without touching it. */
static int page_present(const void *addr) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  uint64_t entry = 0;
  ssize_t n = pread(fd, &entry, 8, (off_t)((uintptr_t)addr / PAGE * 8));
  close(fd);
  return n == 8 && (entry >> 63) & 1;
}

static int compare_regions(const struct peer_plan *plan, uint8_t **base) {
  for (int r = 0; r < plan->nregions; r++)
    for (uint64_t p = 0; p < plan->regions[r].pages; p++) {
      const uint8_t *want = plan->snap->expected + plan->regions[r].offset + p * PAGE;
      if (memcmp(base[r] + p * PAGE, want, PAGE) != 0) {
        if (!report->mismatched_pages++) report->first_mismatch = plan->regions[r].offset / PAGE + p;
      }
    }
  return report->mismatched_pages ? -1 : 0;
}

/* Reads one byte of each page in [first, first + count) step `step`: every page that is missing faults. */
static void touch_pages(const uint8_t *base, uint64_t first, uint64_t count, uint64_t step) {
  for (uint64_t p = first; p < first + count; p += step) touch_sink = base[p * PAGE + (p * 64) % PAGE];
}

/* 0 when `pages` pages at `got` equal `want` byte for byte; else fails the VMM side naming `what` and the page. */
static int expect_pages(const uint8_t *got, const uint8_t *want, uint64_t pages, uint64_t step, const char *what) {
  for (uint64_t p = 0; p < pages; p += step)
    if (memcmp(got + p * PAGE, want + p * PAGE, PAGE) != 0) return peer_fail("%s: page %llu is not the snapshot's", what, (unsigned long long)p);
  return 0;
}

/* Descriptors open in process `pid` (-1 when unreadable); *uffds = how many of them are userfaultfds. */
static int count_fds(pid_t pid, int *uffds) {
  char dir[64];
  snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(dir);
  if (!d) return -1;
  int n = 0;
  *uffds = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue;
    n++;
    char link[400], target[64];
    snprintf(link, sizeof link, "%s/%s", dir, e->d_name);
    ssize_t k = readlink(link, target, sizeof target - 1);
    if (k > 0) {
      target[k] = '\0';
      if (strcmp(target, "anon_inode:[userfaultfd]") == 0) (*uffds)++;
    }
  }
  closedir(d);
  return n;
}

/*
 * The UNMAP scenario's layout (guest pages): region 0 = [0, 2048), region 1 = [2048, 2560). Mid-restore a hole
 * [1024, 1536) is unmapped from region 0 (the worker must split it) and its tail [1792, 2048) too (then mapped again,
 * unregistered); region 1 is then mremapped into the hole. Faults install exactly the pages unmap_installs() says.
 */
#define UNMAP_R0_PAGES 2048u
#define UNMAP_R1_FIRST 2048u
#define UNMAP_R1_PAGES 512u
#define UNMAP_HOLE_FIRST 1024u
#define UNMAP_TAIL_FIRST 1792u

/* A thread whose fault is pending in the worker while its page is unmapped: it must come back (SIGSEGV or a page). */
static __thread sigjmp_buf *segv_jump;
static void on_segv(int sig) {
  (void)sig;
  if (segv_jump) siglongjmp(*segv_jump, 1);
  _exit(99);
}

struct stranded_fault {
  const volatile uint8_t *addr;
  _Atomic int outcome; /* 0 = still blocked, 1 = read the byte, 2 = SIGSEGV */
};

static void *stranded_fault_thread(void *arg) {
  struct stranded_fault *f = arg;
  sigjmp_buf jump;
  segv_jump = &jump;
  if (sigsetjmp(jump, 1) == 0) {
    touch_sink = *f->addr;
    atomic_store(&f->outcome, 1);
  } else {
    atomic_store(&f->outcome, 2);
  }
  segv_jump = NULL;
  return NULL;
}

/* 1 once process `pid` is in the stopped state ('T' in /proc/<pid>/stat). */
static int process_stopped(pid_t pid) {
  char path[64], stat[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  ssize_t n = fd >= 0 ? read(fd, stat, sizeof stat - 1) : -1;
  if (fd >= 0) close(fd);
  if (n <= 0) return 0;
  stat[n] = '\0';
  const char *after_name = strrchr(stat, ')');
  return after_name && after_name[1] == ' ' && after_name[2] == 'T';
}

struct unmapper {
  void *addr;
  size_t len;
  int rc;
};

static void *unmap_thread(void *arg) {
  struct unmapper *u = arg;
  u->rc = munmap(u->addr, u->len);
  return NULL;
}

static int unmap_installs(uint64_t gpage) {
  if (gpage >= UNMAP_R1_FIRST) return gpage < UNMAP_R1_FIRST + UNMAP_R1_PAGES;
  int unmapped = (gpage >= UNMAP_HOLE_FIRST && gpage < UNMAP_HOLE_FIRST + UNMAP_R1_PAGES) || gpage >= UNMAP_TAIL_FIRST;
  return unmapped ? gpage % 2 == 0 : 1; /* unmapped ranges: only the even pages touched before the munmap */
}

static int unmap_scenario(const struct peer_plan *plan, uint8_t **base) {
  const uint8_t *ram = plan->snap->expected;
  /* 1. Part of the restore: the even pages of region 0, the first half of region 1. */
  touch_pages(base[0], 0, UNMAP_R0_PAGES, 2);
  touch_pages(base[1], 0, UNMAP_R1_PAGES / 2, 1);
  if (expect_pages(base[0], ram, UNMAP_R0_PAGES, 2, "region 0 before the munmap") ||
      expect_pages(base[1], ram + (uint64_t)UNMAP_R1_FIRST * PAGE, UNMAP_R1_PAGES / 2, 1, "region 1 before the munmap"))
    return 1;

  /*
   * 2. A hole in the middle of region 0 (UFFD_EVENT_UNMAP; munmap returns once the worker has read the event). With the
   * worker stopped, a thread faults on a hole page first, so the worker reads that fault and the UNMAP in one batch: the
   * faulting thread must not be left blocked (it comes back with SIGSEGV: the page is gone).
   */
  uint8_t *hole = base[0] + (uint64_t)UNMAP_HOLE_FIRST * PAGE;
  struct sigaction segv = {.sa_handler = on_segv}, old_segv;
  sigaction(SIGSEGV, &segv, &old_segv);
  struct stranded_fault stranded = {.addr = hole + PAGE + 64};
  struct unmapper unmapper = {.addr = hole, .len = (uint64_t)UNMAP_R1_PAGES * PAGE, .rc = -1};
  pthread_t fault_tid, unmap_tid;
  kill(plan->worker_pid, SIGSTOP);
  for (uint64_t until = now_ns() + 2000000000ull; !process_stopped(plan->worker_pid);) {
    if (now_ns() > until) return peer_fail("the worker did not stop on SIGSTOP");
    sleep_ms(1);
  }
  pthread_create(&fault_tid, NULL, stranded_fault_thread, &stranded);
  sleep_ms(50);
  int blocked = atomic_load(&stranded.outcome) == 0; /* control: with the worker stopped, the fault waits */
  pthread_create(&unmap_tid, NULL, unmap_thread, &unmapper);
  sleep_ms(50);
  kill(plan->worker_pid, SIGCONT);
  pthread_join(unmap_tid, NULL);
  if (unmapper.rc != 0) return peer_fail("munmap hole failed");
  uint64_t deadline = now_ns() + 3000000000ull;
  while (atomic_load(&stranded.outcome) == 0 && now_ns() < deadline) sleep_ms(1);
  if (atomic_load(&stranded.outcome) == 0) return peer_fail("a fault pending when its page was unmapped was left blocked for 3 s");
  pthread_join(fault_tid, NULL);
  sigaction(SIGSEGV, &old_segv, NULL);
  if (!blocked) return peer_fail("probe: the fault on a hole page did not wait for the stopped worker");

  /* 3. The tail of region 0 unmapped, then mapped again without registering: ordinary memory, no fault reaches the worker. */
  struct worker_stats before = {0}, after = {0};
  if (fetch_stats(plan->stats, &before) != 0) return peer_fail("stats socket");
  uint8_t *tail = base[0] + (uint64_t)UNMAP_TAIL_FIRST * PAGE;
  uint64_t tail_pages = UNMAP_R0_PAGES - UNMAP_TAIL_FIRST;
  if (munmap(tail, tail_pages * PAGE) != 0) return peer_fail("munmap tail: %s", strerror(errno));
  uint8_t *fresh = mmap(tail, tail_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (fresh != tail) return peer_fail("mmap over the unmapped tail: %s", strerror(errno));
  for (uint64_t p = 0; p < tail_pages; p++) {
    if (!page_is_zero(fresh + p * PAGE)) return peer_fail("fresh unregistered page %llu at the unmapped address is not zero", (unsigned long long)p);
    memset(fresh + p * PAGE, (int)(p * 31 + 7), PAGE);
  }
  if (fetch_stats(plan->stats, &after) != 0) return peer_fail("stats socket");
  if (after.faults != before.faults)
    return peer_fail("touching unregistered memory at the unmapped address made %llu faults reach the worker",
                     (unsigned long long)(after.faults - before.faults));
  /* Control: a never-touched registered page does reach the worker (the probe counts faults). */
  touch_pages(base[0], 1, 1, 1);
  if (fetch_stats(plan->stats, &after) != 0 || after.faults != before.faults + 1)
    return peer_fail("probe: a registered page's fault moved the fault count from %llu to %llu", (unsigned long long)before.faults,
                     (unsigned long long)after.faults);

  /*
   * 4. Region 1 moved into the hole (UFFD_EVENT_REMAP). A worker that had not dropped the hole would still find region
   * 0 there and serve region 0's pages; the control: those differ from region 1's (so the byte check below tells).
   */
  uint64_t telling = 0;
  for (uint64_t p = 0; p < UNMAP_R1_PAGES; p++)
    telling += memcmp(ram + (uint64_t)(UNMAP_HOLE_FIRST + p) * PAGE, ram + (uint64_t)(UNMAP_R1_FIRST + p) * PAGE, PAGE) != 0;
  if (telling < UNMAP_R1_PAGES / 2) return peer_fail("probe: only %llu hole pages tell region 0 from region 1", (unsigned long long)telling);
  uint8_t *moved = mremap(base[1], (uint64_t)UNMAP_R1_PAGES * PAGE, (uint64_t)UNMAP_R1_PAGES * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, hole);
  if (moved != hole) return peer_fail("mremap into the hole: %s", strerror(errno));

  /* 5. The rest of the restore: region 0's head and what is left of its tail piece, region 1 at its new address. */
  uint64_t mid_first = UNMAP_HOLE_FIRST + UNMAP_R1_PAGES;
  touch_pages(base[0], 0, UNMAP_HOLE_FIRST, 1);
  touch_pages(base[0], mid_first, UNMAP_TAIL_FIRST - mid_first, 1);
  touch_pages(moved, 0, UNMAP_R1_PAGES, 1);
  if (expect_pages(base[0], ram, UNMAP_HOLE_FIRST, 1, "region 0 head") ||
      expect_pages(base[0] + mid_first * PAGE, ram + mid_first * PAGE, UNMAP_TAIL_FIRST - mid_first, 1, "region 0 after the hole") ||
      expect_pages(moved, ram + (uint64_t)UNMAP_R1_FIRST * PAGE, UNMAP_R1_PAGES, 1, "region 1 moved into the hole"))
    return 1;
  for (uint64_t p = 0; p < tail_pages; p++)
    for (uint64_t i = 0; i < PAGE; i++)
      if (fresh[p * PAGE + i] != (uint8_t)(p * 31 + 7)) return peer_fail("unregistered page %llu lost what was written", (unsigned long long)p);
  snprintf(report->message, sizeof report->message, "%llu of %u pages in the hole tell a stale region table; the stranded fault %s",
           (unsigned long long)telling, UNMAP_R1_PAGES, atomic_load(&stranded.outcome) == 2 ? "got SIGSEGV" : "read a page");
  atomic_store(&report->phase, 2);
  while (!atomic_load(&report->may_exit)) sleep_ms(1);
  return 0;
}

/*
 * The FORK scenario: half of region 0 restored, then fork(). The worker gets UFFD_EVENT_FORK with the child's uffd
 * and closes it; the child must not hang: pages it inherited are the snapshot's, pages never touched are the ordinary
 * anonymous zero pages (its registration went with the closed uffd). Then the parent's restore finishes, byte-exact.
 */
static int fork_scenario(const struct peer_plan *plan, uint8_t **base) {
  uint64_t pages = plan->regions[0].pages, half = pages / 2;
  const uint8_t *ram = plan->snap->expected + plan->regions[0].offset;
  touch_pages(base[0], 0, half, 1);
  if (expect_pages(base[0], ram, half, 1, "before the fork")) return 1;
  int uffds0, fds0 = count_fds(plan->worker_pid, &uffds0);
  /* Control: the probe sees the userfaultfd the handshake passed. */
  if (fds0 < 0 || uffds0 != 1) return peer_fail("probe: worker holds %d userfaultfds (%d fds), want 1", uffds0, fds0);
  struct worker_stats before = {0}, after = {0};
  if (fetch_stats(plan->stats, &before) != 0) return peer_fail("stats socket");

  uint64_t t0 = now_ns();
  pid_t child = fork(); /* returns once the worker has read UFFD_EVENT_FORK */
  if (child < 0) return peer_fail("fork: %s", strerror(errno));
  if (child == 0) {
    for (uint64_t p = 0; p < pages; p++) {
      const uint8_t *got = base[0] + p * PAGE;
      if (p < half ? memcmp(got, ram + p * PAGE, PAGE) != 0 : !page_is_zero(got)) _exit(p < half ? 10 : 11);
    }
    _exit(0);
  }
  uint64_t fork_ms = (now_ns() - t0) / 1000000;
  int status = 0;
  uint64_t deadline = now_ns() + 5000000000ull;
  while (waitpid(child, &status, WNOHANG) != child) {
    if (now_ns() > deadline) {
      kill(child, SIGKILL);
      waitpid(child, &status, 0);
      return peer_fail("the forked child hung for 5 s touching its memory (its uffd left open, nobody serving it)");
    }
    sleep_ms(1);
  }
  double child_ms = (now_ns() - t0) / 1e6;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return peer_fail("forked child: %s", !WIFEXITED(status) ? "killed by a signal"
                                        : WEXITSTATUS(status) == 10 ? "an inherited page is not the snapshot's"
                                        : WEXITSTATUS(status) == 11 ? "a never-touched page is not zero"
                                                                    : "failed");
  /* The worker closed the child's uffd: back to one userfaultfd and as many descriptors as before. */
  int uffds = -1, fds = -1;
  deadline = now_ns() + 2000000000ull;
  while ((fds = count_fds(plan->worker_pid, &uffds)) != fds0 || uffds != 1) {
    if (now_ns() > deadline) return peer_fail("after the fork the worker holds %d fds (%d userfaultfds), before %d (1)", fds, uffds, fds0);
    sleep_ms(1);
  }
  if (fetch_stats(plan->stats, &after) != 0) return peer_fail("stats socket");
  if (after.faults != before.faults) return peer_fail("the child's faults reached the worker (%llu)", (unsigned long long)(after.faults - before.faults));

  struct toucher proto = {.plan = plan};
  memcpy(proto.base, base, sizeof proto.base);
  touch_all(&proto);
  if (compare_regions(plan, base) != 0)
    return peer_fail("after the fork %llu pages differ from the snapshot (first: guest page %llu)", (unsigned long long)report->mismatched_pages,
                     (unsigned long long)report->first_mismatch);
  snprintf(report->message, sizeof report->message, "fork() took %llu ms; child read %llu inherited + %llu zero pages and exited in %.1f ms; worker fds %d -> %d",
           (unsigned long long)fork_ms, (unsigned long long)half, (unsigned long long)(pages - half), child_ms, fds0, fds);
  atomic_store(&report->phase, 2);
  while (!atomic_load(&report->may_exit)) sleep_ms(1);
  return 0;
}

static int run_peer(const struct peer_plan *plan) {
  int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) return peer_fail("userfaultfd: %s", strerror(errno));
  /* Firecracker requires EVENT_REMOVE (balloon); REMAP, UNMAP and FORK only for the harness's own event cases. */
  struct uffdio_api api = {.api = UFFD_API,
                           .features = UFFD_FEATURE_EVENT_REMOVE | (plan->remap || plan->unmap_scenario ? UFFD_FEATURE_EVENT_REMAP : 0) |
                                       (plan->unmap_scenario ? UFFD_FEATURE_EVENT_UNMAP : 0) | (plan->fork_scenario ? UFFD_FEATURE_EVENT_FORK : 0)};
  if (ioctl(uffd, UFFDIO_API, &api) != 0) return peer_fail("UFFDIO_API: %s", strerror(errno));
  uint8_t *base[4];
  char json[2048];
  size_t jl = (size_t)snprintf(json, sizeof json, "[");
  for (int r = plan->nregions - 1; r >= 0; r--) {
    /* Mapped in reverse order with gaps: host addresses do not follow guest offsets. */
    uint64_t len = plan->regions[r].pages * PAGE;
    uint8_t *area = mmap(NULL, len + 2 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    base[r] = mmap(area + PAGE, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    if (area == MAP_FAILED || base[r] == MAP_FAILED) return peer_fail("mmap: %s", strerror(errno));
    struct uffdio_register reg = {.range = {.start = (uint64_t)(uintptr_t)base[r], .len = len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) return peer_fail("UFFDIO_REGISTER: %s", strerror(errno));
  }
  for (int r = 0; r < plan->nregions; r++)
    jl += (size_t)snprintf(json + jl, sizeof json - jl, "%s{\"base_host_virt_addr\":%llu,\"size\":%llu,\"offset\":%llu,\"page_size\":4096,\"page_size_kib\":4096}",
                           r ? "," : "", (unsigned long long)(uintptr_t)base[r], (unsigned long long)(plan->regions[r].pages * PAGE),
                           (unsigned long long)plan->regions[r].offset);
  snprintf(json + jl, sizeof json - jl, "]");
  const char *body = plan->raw_handshake ? plan->raw_handshake : json;

  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", plan->sock);
  if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) return peer_fail("connect %s: %s", plan->sock, strerror(errno));
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  struct iovec iov = {.iov_base = (void *)body, .iov_len = strlen(body)};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (!plan->send_no_fd) {
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &uffd, sizeof(int));
  }
  if (sendmsg(sock, &msg, 0) < 0) return peer_fail("sendmsg: %s", strerror(errno));
  atomic_store(&report->phase, 1);
  if (plan->raw_handshake || plan->send_no_fd) {
    while (!atomic_load(&report->may_exit)) sleep_ms(1);
    return 0;
  }

  if (plan->unmap_scenario) return unmap_scenario(plan, base);
  if (plan->fork_scenario) return fork_scenario(plan, base);

  if (plan->prefetch_expected) {
    /* Nothing touched yet: the pages must be present because the worker put them there ahead of any fault. */
    struct worker_stats s = {0};
    uint64_t deadline = now_ns() + 20000000000ull;
    while (fetch_stats(plan->stats, &s) == 0 && s.prefetched_pages < plan->prefetch_expected && now_ns() < deadline) sleep_ms(2);
    if (s.prefetched_pages != plan->prefetch_expected)
      return peer_fail("worker prefetched %llu pages, want %llu", (unsigned long long)s.prefetched_pages, (unsigned long long)plan->prefetch_expected);
    if (s.faults != 0) return peer_fail("%llu faults before any page was touched", (unsigned long long)s.faults);
    for (int k = 0; k < plan->nprefetched; k++)
      for (uint64_t p = 0; p < plan->prefetched[k].pages; p++)
        if (!page_present(base[0] + (plan->prefetched[k].offset / PAGE + p) * PAGE))
          return peer_fail("prefetched page %llu is not present", (unsigned long long)(plan->prefetched[k].offset / PAGE + p));
    /* Control: the probe sees a page nobody installed as absent. */
    if (page_present(base[0] + (plan->regions[0].pages - 1) * PAGE)) return peer_fail("probe: a page never prefetched reads as present");
  }

  if (plan->remap) {
    /* Move region 0 elsewhere (UFFD_EVENT_REMAP): the worker must serve it at its new address. */
    uint64_t len = plan->regions[0].pages * PAGE;
    uint8_t *dest = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    uint8_t *moved = mremap(base[0], len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dest);
    if (moved == MAP_FAILED) return peer_fail("mremap: %s", strerror(errno));
    base[0] = moved;
  }

  struct toucher proto = {.plan = plan};
  memcpy(proto.base, base, sizeof base);
  uint64_t t0 = now_ns();
  touch_all(&proto);
  report->wall_ns = now_ns() - t0;
  if (!plan->bench && compare_regions(plan, base) != 0)
    return peer_fail("%llu pages differ from the snapshot (first: guest page %llu)", (unsigned long long)report->mismatched_pages,
                     (unsigned long long)report->first_mismatch);

  if (plan->balloon_pages) {
    uint8_t *start = base[0] + plan->balloon_first * PAGE;
    if (madvise(start, plan->balloon_pages * PAGE, MADV_DONTNEED) != 0) return peer_fail("madvise: %s", strerror(errno));
    touch_all(&proto);
    for (uint64_t p = 0; p < plan->regions[0].pages; p++) {
      int in_balloon = p >= plan->balloon_first && p < plan->balloon_first + plan->balloon_pages;
      const uint8_t *got = base[0] + p * PAGE;
      if (in_balloon ? !page_is_zero(got) : memcmp(got, plan->snap->expected + plan->regions[0].offset + p * PAGE, PAGE) != 0)
        return peer_fail("after the balloon gave back pages %llu+%llu, page %llu is %s", (unsigned long long)plan->balloon_first,
                         (unsigned long long)plan->balloon_pages, (unsigned long long)p, in_balloon ? "not zero" : "not the snapshot's");
    }
  }
  atomic_store(&report->phase, 2);
  while (!atomic_load(&report->may_exit)) sleep_ms(1);
  return 0;
}

static pid_t start_peer(const struct peer_plan *plan) {
  memset(report, 0, sizeof *report);
  pid_t pid = fork();
  if (pid == 0) _exit(run_peer(plan));
  return pid;
}

/* Waits for the VMM side to reach `want` (or fail); gives up early when the worker exits meanwhile. */
static int wait_phase(pid_t peer, struct worker *w, int want, unsigned ms) {
  uint64_t deadline = now_ns() + (uint64_t)ms * 1000000ull;
  while (now_ns() < deadline) {
    int phase = atomic_load(&report->phase);
    if (phase == want || phase == 3) return phase;
    int status;
    if (waitpid(peer, &status, WNOHANG) == peer) return -1;
    if (w && wait_worker(w, 0)) return -2;
    sleep_ms(1);
  }
  return 0;
}

/* Lets the VMM side exit; one stuck in a fault nobody will serve (the worker died) is killed after 5 s. */
static int finish_peer(pid_t peer) {
  atomic_store(&report->may_exit, 1);
  int status = 0;
  for (int waited = 0; waitpid(peer, &status, WNOHANG) != peer; waited++) {
    if (waited == 5000) kill(peer, SIGKILL);
    sleep_ms(1);
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* ---- cases ---- */

/* Serves `plan` end to end and checks the counters; `extra` asserts more on the stats. */
static int serve_and_check(struct peer_plan *plan, const char *prefetch, struct worker_stats *out) {
  struct worker w;
  spawn_worker(&w, plan->snap->dir, prefetch);
  if (!await_ready(&w)) {
    snprintf(case_error, sizeof case_error, "worker not ready: exit %d, %s", exit_code(&w), w.err);
    end_worker(&w);
    return -1;
  }
  plan->sock = w.sock;
  plan->stats = w.stats;
  plan->worker_pid = w.pid;
  pid_t peer = start_peer(plan);
  int phase = wait_phase(peer, &w, 2, 60000);
  struct worker_stats s = {0};
  int got_stats = fetch_stats(w.stats, &s);
  int peer_code = finish_peer(peer);
  int rc = 0;
  if (phase != 2) {
    wait_worker(&w, 0);
    snprintf(case_error, sizeof case_error, "VMM side: %s (phase %d, exit %d); worker %s, stderr: %s", report->message, phase, peer_code,
             w.reaped ? "exited" : "running", w.err);
    rc = -1;
  } else if (got_stats != 0) {
    snprintf(case_error, sizeof case_error, "stats socket gave no valid JSON line");
    rc = -1;
  } else {
    rc = check_clean_exit(&w, 3000);
    if (rc == 0 && !strstr(w.out, "\"state\":\"done\"")) {
      snprintf(case_error, sizeof case_error, "no final stats line on stdout: %s", w.out);
      rc = -1;
    }
  }
  end_worker(&w);
  *out = s;
  return rc;
}

static uint64_t histogram_total(const struct worker_stats *s) {
  uint64_t n = 0;
  for (int i = 0; i < 12; i++) n += s->counts[i];
  return n;
}

/* The counters of a restore where every page was installed once by a fault (duplicates counted as eexist). */
static int check_fault_counters(const struct worker_stats *s, const struct snapshot *snap, uint64_t extra_zero) {
  uint64_t nonzero = snap->pages - snap->zero_pages;
  CHECK(strcmp(s->state, "serving") == 0, "state %s, want serving", s->state);
  CHECK(s->copied_pages == nonzero, "copied_pages %llu, want %llu", (unsigned long long)s->copied_pages, (unsigned long long)nonzero);
  CHECK(s->zero_pages == snap->zero_pages + extra_zero, "zero_pages %llu, want %llu", (unsigned long long)s->zero_pages,
        (unsigned long long)(snap->zero_pages + extra_zero));
  CHECK(s->bytes_copied == nonzero * PAGE, "bytes_copied %llu, want %llu", (unsigned long long)s->bytes_copied, (unsigned long long)(nonzero * PAGE));
  CHECK(s->faults == s->copied_pages + s->zero_pages + s->eexist, "faults %llu != copied %llu + zero %llu + eexist %llu",
        (unsigned long long)s->faults, (unsigned long long)s->copied_pages, (unsigned long long)s->zero_pages, (unsigned long long)s->eexist);
  CHECK(s->count == s->faults && histogram_total(s) == s->count, "latency count %llu / histogram %llu, faults %llu", (unsigned long long)s->count,
        (unsigned long long)histogram_total(s), (unsigned long long)s->faults);
  return 0;
}

static struct snapshot tmpl, ckpt, ckpt_zero;

static struct peer_plan whole(const struct snapshot *snap) {
  struct peer_plan p = {.snap = snap, .nregions = 1, .threads = 8};
  p.regions[0].offset = 0;
  p.regions[0].pages = snap->pages;
  return p;
}

static int case_template(void) {
  struct peer_plan plan = whole(&tmpl);
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  if (check_fault_counters(&s, &tmpl, 0)) return -1;
  snprintf(case_error, sizeof case_error, "%llu faults: %llu copied, %llu zero, %llu raced (EEXIST)", (unsigned long long)s.faults,
           (unsigned long long)s.copied_pages, (unsigned long long)s.zero_pages, (unsigned long long)s.eexist);
  return 0;
}

static int case_checkpoint(void) {
  struct peer_plan plan = whole(&ckpt);
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  return check_fault_counters(&s, &ckpt, 0);
}

static int case_checkpoint_zero_base(void) {
  struct peer_plan plan = whole(&ckpt_zero);
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  return check_fault_counters(&s, &ckpt_zero, 0);
}

static int case_multi_region(void) {
  struct peer_plan plan = whole(&ckpt);
  uint64_t n = ckpt.pages;
  plan.nregions = 3;
  plan.regions[0] = (struct region_spec){0, n / 4 + 3};
  plan.regions[1] = (struct region_spec){(n / 4 + 3) * PAGE, 5};
  plan.regions[2] = (struct region_spec){(n / 4 + 8) * PAGE, n - (n / 4 + 8)};
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  return check_fault_counters(&s, &ckpt, 0);
}

static int case_prefetch(void) {
  /* Prefetch the first quarter and the zero run in the middle; everything else must still fault. */
  static struct region_spec runs[2];
  runs[0] = (struct region_spec){0, tmpl.pages / 4};
  runs[1] = (struct region_spec){(tmpl.pages / 2) * PAGE, 32};
  uint8_t index[16];
  uint32_t fields[4] = {0, (uint32_t)(tmpl.pages / 4), (uint32_t)(tmpl.pages / 2), 32};
  for (int f = 0; f < 4; f++)
    for (int b = 0; b < 4; b++) index[f * 4 + b] = (uint8_t)(fields[f] >> (8 * b));
  char path[600];
  snprintf(path, sizeof path, "%s/prefetch.index", root);
  write_file(path, index, sizeof index);
  struct peer_plan plan = whole(&tmpl);
  uint64_t prefetched = tmpl.pages / 4 + 32;
  plan.prefetch_expected = prefetched;
  plan.prefetched = runs;
  plan.nprefetched = 2;
  struct worker_stats s;
  if (serve_and_check(&plan, path, &s)) return -1;
  CHECK(s.prefetched_pages == prefetched, "prefetched_pages %llu", (unsigned long long)s.prefetched_pages);
  CHECK(s.copied_pages + s.zero_pages == tmpl.pages - prefetched, "faults installed %llu pages, want %llu (the rest were prefetched)",
        (unsigned long long)(s.copied_pages + s.zero_pages), (unsigned long long)(tmpl.pages - prefetched));
  CHECK(s.faults == s.copied_pages + s.zero_pages + s.eexist, "faults %llu not explained", (unsigned long long)s.faults);
  return 0;
}

static int case_balloon(void) {
  struct peer_plan plan = whole(&tmpl);
  plan.balloon_first = 64; /* pages 64..127 include random and zero pages of the snapshot */
  plan.balloon_pages = 64;
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  CHECK(s.removed_pages == 64, "removed_pages %llu, want 64", (unsigned long long)s.removed_pages);
  /* Every page of the range faulted again and got a zero page, whatever the snapshot held there. */
  return check_fault_counters(&s, &tmpl, 64);
}

static int case_remap(void) {
  struct peer_plan plan = whole(&tmpl);
  plan.remap = 1;
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  return check_fault_counters(&s, &tmpl, 0);
}

static int case_unmap(void) {
  struct peer_plan plan = whole(&tmpl);
  plan.nregions = 2;
  plan.regions[0] = (struct region_spec){0, UNMAP_R0_PAGES};
  plan.regions[1] = (struct region_spec){(uint64_t)UNMAP_R1_FIRST * PAGE, UNMAP_R1_PAGES};
  plan.unmap_scenario = 1;
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  uint64_t copied = 0, zero = 0;
  for (uint64_t g = 0; g < tmpl.pages; g++)
    if (unmap_installs(g)) page_is_zero(tmpl.expected + g * PAGE) ? zero++ : copied++;
  CHECK(s.copied_pages == copied && s.zero_pages == zero, "copied %llu zero %llu, want %llu and %llu", (unsigned long long)s.copied_pages,
        (unsigned long long)s.zero_pages, (unsigned long long)copied, (unsigned long long)zero);
  CHECK(s.bytes_copied == copied * PAGE, "bytes_copied %llu", (unsigned long long)s.bytes_copied);
  /* The stranded fault is read and counted, installs nothing (its page is gone) and has no latency. */
  CHECK(s.faults == s.copied_pages + s.zero_pages + s.eexist + 1 && s.count + 1 == s.faults,
        "faults %llu not explained (eexist %llu, latency count %llu, one stranded)", (unsigned long long)s.faults, (unsigned long long)s.eexist,
        (unsigned long long)s.count);
  snprintf(case_error, sizeof case_error, "%s", report->message);
  return 0;
}

static int case_fork(void) {
  struct peer_plan plan = whole(&tmpl);
  plan.fork_scenario = 1;
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  if (check_fault_counters(&s, &tmpl, 0)) return -1;
  snprintf(case_error, sizeof case_error, "%s", report->message);
  return 0;
}

static int case_peer_dies(void) {
  struct snapshot *snap = &tmpl;
  struct worker w;
  spawn_worker(&w, snap->dir, NULL);
  if (!await_ready(&w)) {
    end_worker(&w);
    CHECK(0, "worker not ready: %s", w.err);
  }
  struct peer_plan plan = whole(snap);
  plan.sock = w.sock;
  plan.stats = w.stats;
  plan.touch_delay_us = 200;
  pid_t peer = start_peer(&plan);
  struct worker_stats s = {0};
  uint64_t deadline = now_ns() + 20000000000ull;
  while (now_ns() < deadline && (fetch_stats(w.stats, &s) != 0 || s.faults < 200)) sleep_ms(1);
  int phase = atomic_load(&report->phase);
  kill(peer, SIGKILL);
  int status;
  waitpid(peer, &status, 0);
  uint64_t killed = now_ns();
  int rc = 0;
  if (s.faults < 200 || phase != 1) {
    snprintf(case_error, sizeof case_error, "restore not under way when killed (faults %llu, phase %d)", (unsigned long long)s.faults, phase);
    rc = -1;
  } else {
    rc = check_clean_exit(&w, 2000);
    if (rc == 0 && kill(w.pid, 0) == 0) rc = (snprintf(case_error, sizeof case_error, "worker process still there"), -1);
  }
  uint64_t took = (now_ns() - killed) / 1000000;
  end_worker(&w);
  if (rc == 0) snprintf(case_error, sizeof case_error, "worker exited 0 %llu ms after the VMM was killed at %llu faults", (unsigned long long)took, (unsigned long long)s.faults);
  return rc;
}

/* The intact control: the worker comes up on `dir`, then SIGTERM ends it with 0 and no sockets left. */
static int control_ready(const char *dir) {
  struct worker w;
  spawn_worker(&w, dir, NULL);
  int ready = await_ready(&w);
  if (!ready) {
    end_worker(&w);
    CHECK(0, "control: intact snapshot refused: %s", w.err);
  }
  kill(w.pid, SIGTERM);
  int rc = check_clean_exit(&w, 3000);
  end_worker(&w);
  return rc;
}

static int expect_refusal(const char *dir, const char *needle) {
  struct worker w;
  spawn_worker(&w, dir, NULL);
  int rc = check_refusal(&w, needle);
  end_worker(&w);
  return rc;
}

static void copy_snapshot(const struct snapshot *from, struct snapshot *to, const char *name) {
  *to = *from;
  snprintf(to->dir, sizeof to->dir, "%s/%s", root, name);
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", from->dir, to->dir);
  if (system(cmd) != 0) exit(3);
}

static int case_truncated(void) {
  struct snapshot s;
  copy_snapshot(&tmpl, &s, "truncated");
  if (control_ready(s.dir)) return -1;
  char path[700];
  snprintf(path, sizeof path, "%s/memory", s.dir);
  if (truncate(path, (off_t)((tmpl.pages - 1) * PAGE)) != 0) exit(3);
  return expect_refusal(s.dir, "manifest says");
}

static int case_wrong_sha(void) {
  struct snapshot s;
  copy_snapshot(&tmpl, &s, "wrongsha");
  if (control_ready(s.dir)) return -1;
  char path[700];
  snprintf(path, sizeof path, "%s/memory", s.dir);
  int fd = open(path, O_WRONLY);
  uint8_t byte = 0x5a;
  if (pwrite(fd, &byte, 1, 12345) != 1) exit(3);
  close(fd);
  if (expect_refusal(s.dir, "sha256")) return -1;
  /* The same for a checkpoint's memory.pages. */
  struct snapshot c;
  copy_snapshot(&ckpt, &c, "wrongsha-ckpt");
  if (control_ready(c.dir)) return -1;
  snprintf(path, sizeof path, "%s/memory.pages", c.dir);
  fd = open(path, O_WRONLY);
  if (pwrite(fd, &byte, 1, 100) != 1) exit(3);
  close(fd);
  return expect_refusal(c.dir, "memory.pages: sha256");
}

static int case_missing_manifest(void) {
  struct snapshot s;
  copy_snapshot(&tmpl, &s, "nomanifest");
  if (control_ready(s.dir)) return -1;
  char path[700];
  snprintf(path, sizeof path, "%s/manifest.json", s.dir);
  unlink(path);
  return expect_refusal(s.dir, "manifest.json");
}

static int bad_handshake(const char *raw, int no_fd, const char *needle) {
  struct worker w;
  spawn_worker(&w, tmpl.dir, NULL);
  if (!await_ready(&w)) {
    end_worker(&w);
    CHECK(0, "worker not ready: %s", w.err);
  }
  struct peer_plan plan = whole(&tmpl);
  plan.sock = w.sock;
  plan.stats = w.stats;
  plan.raw_handshake = raw;
  plan.send_no_fd = no_fd;
  pid_t peer = start_peer(&plan);
  int rc = check_refusal(&w, needle);
  finish_peer(peer);
  end_worker(&w);
  return rc;
}

static int case_bad_handshake(void) {
  /* Control: the intact handshake on the same snapshot is served (case_template covers a full restore; here a short one). */
  struct peer_plan plan = whole(&tmpl);
  plan.threads = 2;
  struct worker_stats s;
  if (serve_and_check(&plan, NULL, &s)) return -1;
  if (bad_handshake("[{\"base_host_virt_addr\":4096,\"size\":", 0, "not a JSON array")) return -1;
  if (bad_handshake("[{\"base_host_virt_addr\":1073741824,\"size\":2097152,\"offset\":0,\"page_size\":2097152}]", 0, "page size 2097152")) return -1;
  char outside[256];
  snprintf(outside, sizeof outside, "[{\"base_host_virt_addr\":1073741824,\"size\":%llu,\"offset\":4096,\"page_size\":4096}]",
           (unsigned long long)(tmpl.pages * PAGE));
  if (bad_handshake(outside, 0, "outside guest RAM")) return -1;
  if (bad_handshake("[]", 0, "0 regions")) return -1;
  char good[256];
  snprintf(good, sizeof good, "[{\"base_host_virt_addr\":1073741824,\"size\":4096,\"offset\":0,\"page_size\":4096}]");
  return bad_handshake(good, 1, "no file descriptor");
}

static int case_sigterm_while_serving(void) {
  struct worker w;
  spawn_worker(&w, tmpl.dir, NULL);
  if (!await_ready(&w)) {
    end_worker(&w);
    CHECK(0, "worker not ready: %s", w.err);
  }
  struct peer_plan plan = whole(&tmpl);
  plan.sock = w.sock;
  plan.stats = w.stats;
  pid_t peer = start_peer(&plan);
  int phase = wait_phase(peer, &w, 2, 60000);
  kill(w.pid, SIGTERM);
  int rc = phase == 2 ? check_clean_exit(&w, 3000) : (snprintf(case_error, sizeof case_error, "VMM side: %s", report->message), -1);
  finish_peer(peer);
  end_worker(&w);
  return rc;
}

/* ---- bench ---- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

struct pread_job {
  int fd;
  uint64_t pages;
  int threads, index;
  uint64_t *latency;
};

static void *pread_thread(void *arg) {
  struct pread_job *j = arg;
  uint8_t buf[PAGE];
  for (uint64_t p = (uint64_t)j->index; p < j->pages; p += (uint64_t)j->threads) {
    uint64_t t0 = now_ns();
    if (pread(j->fd, buf, PAGE, (off_t)(p * PAGE)) != PAGE) abort();
    touch_sink = buf[(p * 64) % PAGE];
    j->latency[p] = now_ns() - t0;
  }
  return NULL;
}

static int run_bench(uint64_t pages, int threads) {
  struct snapshot snap;
  make_template(&snap, "bench", pages);
  struct worker w;
  spawn_worker(&w, snap.dir, NULL);
  if (!await_ready(&w)) {
    fprintf(stderr, "worker not ready: %s\n", w.err);
    return 1;
  }
  struct peer_plan plan = whole(&snap);
  plan.threads = threads;
  plan.bench = 1;
  plan.sock = w.sock;
  plan.stats = w.stats;
  pid_t peer = start_peer(&plan);
  if (wait_phase(peer, &w, 2, 120000) != 2) {
    fprintf(stderr, "VMM side failed: %s\n", report->message);
    return 1;
  }
  struct worker_stats s = {0};
  fetch_stats(w.stats, &s);
  uint64_t *uffd_lat = malloc(pages * sizeof *uffd_lat);
  memcpy(uffd_lat, report->latency_ns, pages * sizeof *uffd_lat);
  uint64_t uffd_wall = report->wall_ns;
  finish_peer(peer);
  wait_worker(&w, 3000);
  end_worker(&w);

  /* Baseline in the same run: pread() of the same pages from the same (page-cached) file, same thread count. */
  char path[600];
  snprintf(path, sizeof path, "%s/memory", snap.dir);
  int fd = open(path, O_RDONLY);
  uint64_t *pread_lat = malloc(pages * sizeof *pread_lat);
  pthread_t tids[64];
  struct pread_job jobs[64];
  uint64_t t0 = now_ns();
  for (int i = 0; i < threads; i++) {
    jobs[i] = (struct pread_job){fd, pages, threads, i, pread_lat};
    pthread_create(&tids[i], NULL, pread_thread, &jobs[i]);
  }
  for (int i = 0; i < threads; i++) pthread_join(tids[i], NULL);
  uint64_t pread_wall = now_ns() - t0;
  close(fd);
  qsort(uffd_lat, pages, sizeof *uffd_lat, cmp_u64);
  qsort(pread_lat, pages, sizeof *pread_lat, cmp_u64);
  double u50 = uffd_lat[pages / 2] / 1000.0, u99 = uffd_lat[pages * 99 / 100] / 1000.0;
  double p50 = pread_lat[pages / 2] / 1000.0, p99 = pread_lat[pages * 99 / 100] / 1000.0;
  printf("{\"pages\":%llu,\"threads\":%d,\"uffd\":{\"faults_per_s\":%.0f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"wall_ms\":%.1f,"
         "\"worker_faults\":%llu,\"worker_mean_us\":%.2f},\"pread\":{\"reads_per_s\":%.0f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"wall_ms\":%.1f}}\n",
         (unsigned long long)pages, threads, pages / (uffd_wall / 1e9), u50, u99, uffd_wall / 1e6, (unsigned long long)s.faults,
         s.count ? (double)s.sum / (double)s.count : 0.0, pages / (pread_wall / 1e9), p50, p99, pread_wall / 1e6);
  free(uffd_lat);
  free(pread_lat);
  free(snap.expected);
  return 0;
}

/* ---- main ---- */

struct test_case {
  const char *name;
  int (*run)(void);
};

static void cleanup_root(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (root[0]) (void)!system(cmd);
}

int main(int argc, char **argv) {
  int bench = 0, threads = 8;
  const char *only = NULL;
  uint64_t bench_pages = 65536;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--worker") && i + 1 < argc) worker_path = argv[++i];
    else if (!strcmp(argv[i], "--sanitized")) sanitized = 1;
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!strcmp(argv[i], "--worker-wrapper") && i + 1 < argc) {
      char *words = strdup(argv[++i]);
      for (char *save = NULL, *word = strtok_r(words, " ", &save); word && nwrapper < 16; word = strtok_r(NULL, " ", &save)) wrapper_words[nwrapper++] = word;
    }
    else if (!strcmp(argv[i], "--bench")) bench = 1;
    else if (!strcmp(argv[i], "--pages") && i + 1 < argc) bench_pages = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: uffd-harness --worker PATH [--sanitized] [--only N[,N...]] [--worker-wrapper CMD] | --worker PATH --bench [--pages N] "
                      "[--threads T]\n");
      return 2;
    }
  }
  if (!worker_path || threads < 1 || threads > 64 || bench_pages < 256 || bench_pages % 256) {
    fprintf(stderr, "uffd-harness: --worker is required; --threads 1..64; --pages a multiple of 256\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  snprintf(root, sizeof root, "/tmp/uffd-harness.XXXXXX");
  if (!mkdtemp(root)) return 3;
  atexit(cleanup_root);
  uint64_t report_pages = bench ? bench_pages : 0;
  report = mmap(NULL, sizeof *report + report_pages * 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (report == MAP_FAILED) return 3;
  if (bench) return run_bench(bench_pages, threads);

  make_template(&tmpl, "template", 4096);            /* 16 MiB */
  make_checkpoint(&ckpt, "checkpoint", &tmpl, 4096);
  make_checkpoint(&ckpt_zero, "checkpoint-zero", NULL, 4096);
  const struct test_case cases[] = {
      {"template layout: 4096 pages served to 8 threads at once, every byte matches, counters add up", case_template},
      {"checkpoint layout: template base + memory.pages overlay, every byte matches", case_checkpoint},
      {"checkpoint layout over an all-zero base (memoryFileIdentity zero:<bytes>)", case_checkpoint_zero_base},
      {"three regions at unordered host addresses with offsets", case_multi_region},
      {"prefetch: listed pages present before any fault, the rest still faulted", case_prefetch},
      {"balloon: MADV_DONTNEED (UFFD_EVENT_REMOVE) then re-touch gives zero pages", case_balloon},
      {"mremap of a region (UFFD_EVENT_REMAP): served at its new address", case_remap},
      {"VMM killed mid-restore: worker exits 0 promptly, sockets gone", case_peer_dies},
      {"truncated memory file refused with one line (control: intact file served)", case_truncated},
      {"wrong sha256 refused with one line, template and checkpoint (controls: intact)", case_wrong_sha},
      {"bad handshakes refused with one line: bad JSON, 2 MiB pages, outside RAM, no regions, no fd (control: good one)",
       case_bad_handshake},
      {"missing manifest refused with one line (control: present)", case_missing_manifest},
      {"SIGTERM while serving: exit 0, sockets gone", case_sigterm_while_serving},
      {"munmap mid-restore (UFFD_EVENT_UNMAP): a fault pending on the hole comes back, hole and tail dropped, rest served, region moved "
       "into the hole served, unmapped address mapped again is ordinary memory (controls: the fault waits while the worker is stopped, a "
       "registered fault is counted, the hole tells a stale table)",
       case_unmap},
      {"fork mid-restore (UFFD_EVENT_FORK): child's uffd closed, child does not hang (inherited pages, zero pages), no fd leaked, "
       "parent still served (control: the fd probe sees the uffd)",
       case_fork},
  };
  int passed = 0, failed = 0, n = (int)(sizeof cases / sizeof cases[0]);
  printf("TAP version 13\n1..%d\n", n);
  for (int i = 0; i < n; i++) {
    if (only) {
      /* --only 1,14: the other cases are reported as skipped. */
      int wanted = 0;
      for (const char *c = only; *c; c += strcspn(c, ",") + (c[strcspn(c, ",")] == ',')) wanted |= atoi(c) == i + 1;
      if (!wanted) {
        printf("ok %d - %s # SKIP not in --only\n", i + 1, cases[i].name);
        continue;
      }
    }
    case_error[0] = '\0';
    uint64_t t0 = now_ns();
    int rc = cases[i].run();
    double ms = (now_ns() - t0) / 1e6;
    if (rc == 0) {
      passed++;
      printf("ok %d - %s%s (%.0f ms)%s%s\n", i + 1, sanitized ? "[asan+ubsan] " : "", cases[i].name, ms, case_error[0] ? " # " : "", case_error);
    } else {
      failed++;
      printf("not ok %d - %s%s (%.0f ms)\n  # %s\n", i + 1, sanitized ? "[asan+ubsan] " : "", cases[i].name, ms, case_error);
    }
    fflush(stdout);
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
