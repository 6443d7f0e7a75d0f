/*
 * kiln-uffd-worker --socket PATH --snapshot DIR [--prefetch FILE] [--stats-socket PATH]
 *
 * Verifies the snapshot, listens on PATH (prints `ready`), takes Firecracker's one handshake (regions JSON + the
 * userfaultfd over SCM_RIGHTS) and serves the guest's page faults from the snapshot until Firecracker goes away.
 * Exit codes: 0 = the peer went away or SIGTERM; 2 = refused (one line on stderr); 1 = an unexpected serving error.
 */
#define _GNU_SOURCE
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static struct worker_stats stats;
static struct guest_memory mem;
static struct region regions[MAX_REGIONS];
static size_t nregions;
/* Per guest page: 1 once a balloon REMOVE covered it; from then on it is served as zeros. */
static uint8_t *page_removed;
/*
 * Held while the fault loop reads events and applies REMOVE/UNMAP/REMAP, and while the prefetch thread checks a page
 * and installs it: a prefetch copy can then never land between a REMOVE being read and the page being marked removed
 * (it would put stale snapshot content into memory the guest gave back).
 */
static pthread_mutex_t layout_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int peer_gone;
static int uffd = -1;
static const char *socket_path, *stats_path;

static void remove_sockets(void) {
  if (socket_path) unlink(socket_path);
  if (stats_path) unlink(stats_path);
}

static void __attribute__((noreturn, format(printf, 2, 3))) finish(int code, const char *fmt, ...) {
  if (fmt) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    /* Exactly one line: a newline inside a path or message would split it. */
    for (char *c = line; *c; c++)
      if (*c == '\n' || *c == '\r') *c = ' ';
    fprintf(stderr, "kiln-uffd-worker: %s\n", line);
  }
  exit(code);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static const struct region *region_of_addr(uint64_t addr) {
  for (size_t i = 0; i < nregions; i++)
    if (addr >= regions[i].base && addr - regions[i].base < regions[i].size) return &regions[i];
  return NULL;
}

/* ---- installing pages ---- */

enum install_result { INSTALLED, ALREADY_THERE, RETRY_LATER, PEER_GONE, VMA_GONE };

/* Installs `npages` pages at `addr` from guest page `gpage` on: zeros when `src` is NULL. Sets *done to pages installed. */
static enum install_result install(uint64_t addr, const uint8_t *src, uint64_t npages, uint64_t *done) {
  uint64_t len = npages * GUEST_PAGE_SIZE;
  int64_t result;
  int rc;
  if (src) {
    struct uffdio_copy copy = {.dst = addr, .src = (uint64_t)(uintptr_t)src, .len = len, .mode = 0};
    rc = ioctl(uffd, UFFDIO_COPY, &copy);
    result = copy.copy;
  } else {
    struct uffdio_zeropage zero = {.range = {.start = addr, .len = len}, .mode = 0};
    rc = ioctl(uffd, UFFDIO_ZEROPAGE, &zero);
    result = zero.zeropage;
  }
  int err = errno;
  *done = rc == 0 ? npages : (result > 0 ? (uint64_t)result / GUEST_PAGE_SIZE : 0);
  if (rc == 0) return INSTALLED;
  if (*done > 0) return INSTALLED; /* partial: the caller goes on from the first page not installed */
  switch (err) {
    case EEXIST: return ALREADY_THERE;
    case EAGAIN: return RETRY_LATER; /* the peer's layout is changing (an event not read yet) */
    case ESRCH: return PEER_GONE;    /* the peer's mm is gone */
    case ENOENT:
    case EINVAL: return VMA_GONE;    /* the range is no longer registered (unmapped) */
    default: finish(1, "%s at 0x%llx: %s", src ? "UFFDIO_COPY" : "UFFDIO_ZEROPAGE", (unsigned long long)addr, strerror(err));
  }
}

static void wake(uint64_t addr) {
  struct uffdio_range range = {.start = addr, .len = GUEST_PAGE_SIZE};
  (void)ioctl(uffd, UFFDIO_WAKE, &range);
}

/* ---- the fault loop ---- */

struct pending_fault {
  uint64_t addr;
  uint64_t read_ns;
};
static struct pending_fault *deferred;
static size_t ndeferred, deferred_cap;

static void defer(uint64_t addr, uint64_t read_ns) {
  if (ndeferred == deferred_cap) {
    size_t cap = deferred_cap ? deferred_cap * 2 : 64;
    struct pending_fault *grown = realloc(deferred, cap * sizeof *grown);
    if (!grown) finish(1, "out of memory");
    deferred = grown;
    deferred_cap = cap;
  }
  deferred[ndeferred].addr = addr;
  deferred[ndeferred].read_ns = read_ns;
  ndeferred++;
}

/*
 * The last ranges UNMAP dropped or REMAP moved away from (a ring). A fault there that has not been served yet raced the
 * change: it was read in the same batch as the event (layout events apply first) or was being retried after EAGAIN.
 * Touched only by the fault loop's thread.
 */
#define RETIRED_RANGES 64
static struct {
  uint64_t start, end;
} retired[RETIRED_RANGES];
static size_t nretired;

static void retire_range(uint64_t start, uint64_t end) {
  retired[nretired % RETIRED_RANGES].start = start;
  retired[nretired % RETIRED_RANGES].end = end;
  nretired++;
}

static int was_retired(uint64_t addr) {
  size_t n = nretired < RETIRED_RANGES ? nretired : RETIRED_RANGES;
  for (size_t i = 0; i < n; i++)
    if (addr >= retired[i].start && addr < retired[i].end) return 1;
  return 0;
}

/* Serves one fault; returns 0 when done with it (served, raced, or the range is gone), 1 when it must be retried. */
static int serve_fault(uint64_t addr, uint64_t read_ns) {
  const struct region *r = region_of_addr(addr);
  if (!r) {
    /*
     * A fault that raced the unmapping or moving of its page: the faulting thread sleeps until someone wakes it, so
     * wake it; it retries against the new layout (SIGSEGV where nothing is mapped any more, as for any process).
     */
    if (was_retired(addr)) {
      wake(addr);
      return 0;
    }
    /* Outside every region we were ever told of: nothing sane to install, and a wake would only make it fault again. */
    fprintf(stderr, "kiln-uffd-worker: fault at 0x%llx outside every guest region, ignored\n", (unsigned long long)addr);
    return 0;
  }
  uint64_t gpage = (r->offset + (addr - r->base)) / GUEST_PAGE_SIZE;
  const uint8_t *src = page_removed[gpage] ? NULL : guest_page_source(&mem, gpage);
  uint64_t done = 0;
  switch (install(addr, src, 1, &done)) {
    case INSTALLED:
      if (src) {
        atomic_fetch_add(&stats.copied_pages, 1);
        atomic_fetch_add(&stats.bytes_copied, GUEST_PAGE_SIZE);
      } else {
        atomic_fetch_add(&stats.zero_pages, 1);
      }
      break;
    case ALREADY_THERE:
      /* Another thread's fault or the prefetcher installed it; the copy that did woke only its own waiters. */
      atomic_fetch_add(&stats.eexist, 1);
      wake(addr);
      break;
    case RETRY_LATER: return 1;
    case PEER_GONE: atomic_store(&peer_gone, 1); return 0;
    case VMA_GONE:
      /* Our uffd no longer covers the page (its event is not read yet): the thread retries against what is there now. */
      wake(addr);
      return 0;
  }
  stats_record_latency(&stats, now_ns() - read_ns);
  return 0;
}

/* Splits the region holding `at` strictly inside it in two, so that ranges starting or ending there cover whole regions. */
static void split_regions_at(uint64_t at) {
  for (size_t i = 0; i < nregions; i++) {
    struct region *r = &regions[i];
    if (at > r->base && at - r->base < r->size) {
      if (nregions == MAX_REGIONS) finish(1, "more than %d guest regions after UNMAP/REMAP events", MAX_REGIONS);
      uint64_t head = at - r->base;
      regions[nregions].base = at;
      regions[nregions].size = r->size - head;
      regions[nregions].offset = r->offset + head;
      nregions++;
      r->size = head;
      return;
    }
  }
}

/* UNMAP drops [start, end) from the regions; REMAP moves it to `to`. */
static void apply_layout_change(uint64_t start, uint64_t end, int unmap, uint64_t to) {
  retire_range(start, end);
  split_regions_at(start);
  split_regions_at(end);
  for (size_t i = 0; i < nregions;) {
    struct region *r = &regions[i];
    if (r->base >= start && r->base + r->size <= end) {
      if (unmap) {
        regions[i] = regions[--nregions];
        continue;
      }
      r->base = to + (r->base - start);
    }
    i++;
  }
}

static void mark_removed(uint64_t start, uint64_t end) {
  for (size_t i = 0; i < nregions; i++) {
    const struct region *r = &regions[i];
    uint64_t lo = start > r->base ? start : r->base, hi = end < r->base + r->size ? end : r->base + r->size;
    for (uint64_t a = lo; a < hi; a += GUEST_PAGE_SIZE) {
      uint64_t gpage = (r->offset + (a - r->base)) / GUEST_PAGE_SIZE;
      if (!page_removed[gpage]) {
        page_removed[gpage] = 1;
        atomic_fetch_add(&stats.removed_pages, 1);
      }
    }
  }
}

/* Reads every queued event; layout events apply under the lock, faults are served after it is released. */
static void read_events(void) {
  struct uffd_msg msgs[64];
  for (;;) {
    pthread_mutex_lock(&layout_lock);
    ssize_t n = read(uffd, msgs, sizeof msgs);
    uint64_t read_ns = now_ns();
    if (n < 0) {
      int err = errno;
      pthread_mutex_unlock(&layout_lock);
      if (err == EAGAIN || err == EINTR) return;
      finish(1, "reading the userfaultfd: %s", strerror(err));
    }
    size_t count = (size_t)n / sizeof msgs[0];
    for (size_t i = 0; i < count; i++) {
      struct uffd_msg *m = &msgs[i];
      switch (m->event) {
        case UFFD_EVENT_REMOVE: mark_removed(m->arg.remove.start, m->arg.remove.end); break;
        case UFFD_EVENT_UNMAP: apply_layout_change(m->arg.remove.start, m->arg.remove.end, 1, 0); break;
        case UFFD_EVENT_REMAP: apply_layout_change(m->arg.remap.from, m->arg.remap.from + m->arg.remap.len, 0, m->arg.remap.to); break;
        case UFFD_EVENT_FORK:
          /* A child's copy of the guest memory is not ours to serve (Firecracker never forks with guest memory). */
          close((int)m->arg.fork.ufd);
          break;
        default: break;
      }
    }
    pthread_mutex_unlock(&layout_lock);
    for (size_t i = 0; i < count; i++) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      atomic_fetch_add(&stats.faults, 1);
      uint64_t addr = msgs[i].arg.pagefault.address & ~(uint64_t)(GUEST_PAGE_SIZE - 1);
      if (serve_fault(addr, read_ns)) defer(addr, read_ns);
    }
    if (count < sizeof msgs / sizeof msgs[0]) return;
  }
}

static void retry_deferred(void) {
  size_t kept = 0;
  for (size_t i = 0; i < ndeferred; i++)
    if (serve_fault(deferred[i].addr, deferred[i].read_ns)) deferred[kept++] = deferred[i];
  ndeferred = kept;
}

/* ---- prefetch ---- */

static struct page_run *prefetch_runs;
static size_t prefetch_nruns;

/* The host address a guest page is mapped at, or 0 when no region maps it. Called under layout_lock. */
static uint64_t addr_of_guest_page(uint64_t gpage, const struct region **out) {
  uint64_t off = gpage * GUEST_PAGE_SIZE;
  for (size_t i = 0; i < nregions; i++)
    if (off >= regions[i].offset && off - regions[i].offset < regions[i].size) {
      *out = &regions[i];
      return regions[i].base + (off - regions[i].offset);
    }
  return 0;
}

#define PREFETCH_BATCH 16

static void *prefetch_thread(void *arg) {
  (void)arg;
  for (size_t r = 0; r < prefetch_nruns && !atomic_load(&peer_gone); r++) {
    uint64_t gpage = prefetch_runs[r].first, end = gpage + prefetch_runs[r].count;
    while (gpage < end && !atomic_load(&peer_gone)) {
      pthread_mutex_lock(&layout_lock);
      const struct region *reg = NULL;
      uint64_t addr = addr_of_guest_page(gpage, &reg);
      if (!addr) {
        pthread_mutex_unlock(&layout_lock);
        gpage++;
        continue;
      }
      /* A batch: consecutive pages in one region, all zero or all copied from consecutive source bytes. */
      const uint8_t *src = page_removed[gpage] ? NULL : guest_page_source(&mem, gpage);
      uint64_t n = 1;
      while (n < PREFETCH_BATCH && gpage + n < end && addr + n * GUEST_PAGE_SIZE - reg->base < reg->size) {
        const uint8_t *next = page_removed[gpage + n] ? NULL : guest_page_source(&mem, gpage + n);
        if (src ? next != src + n * GUEST_PAGE_SIZE : next != NULL) break;
        n++;
      }
      uint64_t done = 0;
      enum install_result result = install(addr, src, n, &done);
      pthread_mutex_unlock(&layout_lock);
      if (done) {
        atomic_fetch_add(&stats.prefetched_pages, done);
        if (src) atomic_fetch_add(&stats.bytes_copied, done * GUEST_PAGE_SIZE);
        gpage += done;
        continue;
      }
      switch (result) {
        case ALREADY_THERE: atomic_fetch_add(&stats.eexist, 1); gpage++; break;
        case RETRY_LATER: {
          struct timespec pause = {.tv_sec = 0, .tv_nsec = 100000};
          nanosleep(&pause, NULL);
          break;
        }
        case PEER_GONE: atomic_store(&peer_gone, 1); return NULL;
        default: gpage++; break;
      }
    }
  }
  return NULL;
}

/* ---- setup ---- */

static int listen_on(const char *path) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) finish(EXIT_REFUSED, "socket path too long: %s", path);
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) finish(EXIT_REFUSED, "socket: %s", strerror(errno));
  struct stat st;
  if (lstat(path, &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) finish(EXIT_REFUSED, "%s exists and is not a socket", path);
    unlink(path); /* a stale socket of an earlier worker */
  }
  mode_t old = umask(0177);
  int rc = bind(fd, (struct sockaddr *)&addr, sizeof addr);
  umask(old);
  if (rc != 0) finish(EXIT_REFUSED, "bind %s: %s", path, strerror(errno));
  if (chmod(path, 0600) != 0 || listen(fd, 1) != 0) finish(EXIT_REFUSED, "listen %s: %s", path, strerror(errno));
  return fd;
}

/* Waits for `fd` to be readable; SIGTERM/SIGINT meanwhile end the worker cleanly. */
static void wait_readable(int fd, int sigfd) {
  struct pollfd pfds[2] = {{.fd = fd, .events = POLLIN}, {.fd = sigfd, .events = POLLIN}};
  for (;;) {
    if (poll(pfds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      finish(1, "poll: %s", strerror(errno));
    }
    if (pfds[1].revents) finish(0, NULL);
    if (pfds[0].revents) return;
  }
}

static int is_userfaultfd(int fd) {
  char link[64], target[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n <= 0) return 0;
  target[n] = '\0';
  return strcmp(target, "anon_inode:[userfaultfd]") == 0;
}

/* Receives the handshake on `conn`: the regions and the userfaultfd. Anything else is a refusal. */
static void receive_handshake(int conn, int sigfd) {
  wait_readable(conn, sigfd);
  static char body[64 * 1024];
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(4 * sizeof(int))];
  } control;
  struct iovec iov = {.iov_base = body, .iov_len = sizeof body - 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf};
  ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
  if (n < 0) finish(EXIT_REFUSED, "handshake: %s", strerror(errno));
  if (n == 0) finish(EXIT_REFUSED, "the peer closed the connection before the handshake");
  int fds[4], nfds = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
      for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int) && nfds < 4; i++) memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
  if (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) finish(EXIT_REFUSED, "handshake truncated (more than %zu bytes or 4 descriptors)", sizeof body - 1);
  /* The second descriptor Firecracker forks may send (a guest-memory memfd) is not used: pages come from the snapshot. */
  for (int i = 1; i < nfds; i++) close(fds[i]);
  if (nfds == 0) finish(EXIT_REFUSED, "handshake carried no file descriptor (the userfaultfd)");
  if (!is_userfaultfd(fds[0])) finish(EXIT_REFUSED, "handshake descriptor is not a userfaultfd");
  uffd = fds[0];
  char err[512] = "";
  if (parse_handshake(body, (size_t)n, mem.bytes, regions, &nregions, err, sizeof err) != 0) finish(EXIT_REFUSED, "%s", err);
  int flags = fcntl(uffd, F_GETFL);
  if (flags >= 0 && !(flags & O_NONBLOCK)) fcntl(uffd, F_SETFL, flags | O_NONBLOCK);
}

static void usage(const char *why) {
  finish(EXIT_REFUSED, "%s (usage: kiln-uffd-worker --socket PATH --snapshot DIR [--prefetch FILE] [--stats-socket PATH])", why);
}

int main(int argc, char **argv) {
  const char *snapshot_dir = NULL, *prefetch_path = NULL;
  static const struct option options[] = {{"socket", required_argument, NULL, 's'},
                                          {"snapshot", required_argument, NULL, 'd'},
                                          {"prefetch", required_argument, NULL, 'p'},
                                          {"stats-socket", required_argument, NULL, 'm'},
                                          {NULL, 0, NULL, 0}};
  opterr = 0;
  for (int opt; (opt = getopt_long(argc, argv, "", options, NULL)) != -1;) {
    switch (opt) {
      case 's': socket_path = optarg; break;
      case 'd': snapshot_dir = optarg; break;
      case 'p': prefetch_path = optarg; break;
      case 'm': stats_path = optarg; break;
      default: usage("unknown or incomplete option");
    }
  }
  if (optind != argc) usage("unexpected argument");
  if (!socket_path || !snapshot_dir) usage("--socket and --snapshot are required");

  /* Signals are taken through a signalfd on the main loop; every thread inherits the mask. */
  sigset_t termination;
  sigemptyset(&termination);
  sigaddset(&termination, SIGTERM);
  sigaddset(&termination, SIGINT);
  pthread_sigmask(SIG_BLOCK, &termination, NULL);
  signal(SIGPIPE, SIG_IGN);
  int sigfd = signalfd(-1, &termination, SFD_CLOEXEC);
  if (sigfd < 0) finish(1, "signalfd: %s", strerror(errno));
  atexit(remove_sockets);

  char err[1024] = "";
  atomic_store(&stats.state, STATE_VERIFYING);
  if (stats_path && stats_server_start(stats_path, &stats, err, sizeof err) != 0) {
    stats_path = NULL; /* not ours to remove */
    finish(EXIT_REFUSED, "%s", err);
  }
  if (load_guest_memory(snapshot_dir, &mem, err, sizeof err) != 0) finish(EXIT_REFUSED, "%s", err);
  uint64_t prefetch_pages = 0;
  if (prefetch_path && read_page_runs(prefetch_path, mem.pages, &prefetch_runs, &prefetch_nruns, &prefetch_pages, err, sizeof err) != 0)
    finish(EXIT_REFUSED, "prefetch list %s", err);
  page_removed = calloc(mem.pages, 1);
  if (!page_removed) finish(1, "out of memory");

  int listen_fd = listen_on(socket_path);
  atomic_store(&stats.state, STATE_WAITING);
  fputs("ready\n", stdout);
  fflush(stdout);

  wait_readable(listen_fd, sigfd);
  int conn = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
  if (conn < 0) finish(EXIT_REFUSED, "accept: %s", strerror(errno));
  close(listen_fd); /* one peer only */
  receive_handshake(conn, sigfd);
  atomic_store(&stats.state, STATE_SERVING);

  if (prefetch_nruns) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, prefetch_thread, NULL) != 0) finish(1, "prefetch thread: cannot start");
    pthread_detach(thread);
  }

  /*
   * Firecracker keeps its end of the socket open for its whole life and sends nothing after the handshake, so the
   * socket closing is how its exit shows (the uffd itself stays open: we hold it).
   */
  struct pollfd pfds[3] = {{.fd = uffd, .events = POLLIN}, {.fd = conn, .events = POLLIN | POLLRDHUP}, {.fd = sigfd, .events = POLLIN}};
  while (!atomic_load(&peer_gone)) {
    int ready = poll(pfds, 3, ndeferred ? 1 : -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      finish(1, "poll: %s", strerror(errno));
    }
    if (pfds[2].revents) break;
    if (pfds[0].revents & POLLIN) read_events();
    if (pfds[0].revents & (POLLERR | POLLHUP)) break;
    if (ndeferred) retry_deferred();
    if (pfds[1].revents & (POLLHUP | POLLRDHUP | POLLERR)) break;
    if (pfds[1].revents & POLLIN) {
      char sink[256];
      ssize_t n = recv(conn, sink, sizeof sink, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
    }
  }
  atomic_store(&peer_gone, 1);
  atomic_store(&stats.state, STATE_DONE);
  /* The final counters, for a supervisor that folds an exited worker's totals in. */
  char line[1024];
  if (stats_format(&stats, line, sizeof line) > 0) {
    fputs(line, stdout);
    fflush(stdout);
  }
  pthread_mutex_lock(&layout_lock); /* the prefetch thread is not mid-install when the process goes */
  exit(0);
}
