/*
 * The worker's counters, served as one JSON line per connection on --stats-socket (the host agent scrapes them into
 * /metrics). A thread of its own answers, so a scrape never waits behind the fault loop.
 */
#define _GNU_SOURCE
#include "worker.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

const unsigned latency_le_us[LATENCY_BUCKETS] = {5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000};

void stats_record_latency(struct worker_stats *stats, uint64_t ns) {
  int bucket = LATENCY_BUCKETS;
  for (int i = 0; i < LATENCY_BUCKETS; i++)
    if (ns <= (uint64_t)latency_le_us[i] * 1000u) {
      bucket = i;
      break;
    }
  atomic_fetch_add_explicit(&stats->latency_counts[bucket], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&stats->latency_sum_ns, ns, memory_order_relaxed);
  atomic_fetch_add_explicit(&stats->latency_count, 1, memory_order_relaxed);
}

static const char *state_name(int state) {
  switch (state) {
    case STATE_VERIFYING: return "verifying";
    case STATE_WAITING: return "waiting";
    case STATE_SERVING: return "serving";
    default: return "done";
  }
}

#define LOAD(field) ((unsigned long long)atomic_load_explicit(&stats->field, memory_order_relaxed))

int stats_format(struct worker_stats *stats, char *buf, size_t cap) {
  size_t len = 0;
  int n = snprintf(buf, cap,
                   "{\"state\":\"%s\",\"faults\":%llu,\"copied_pages\":%llu,\"zero_pages\":%llu,\"bytes_copied\":%llu,"
                   "\"prefetched_pages\":%llu,\"removed_pages\":%llu,\"eexist\":%llu,\"latency_us\":{\"le\":[",
                   state_name(atomic_load(&stats->state)), LOAD(faults), LOAD(copied_pages), LOAD(zero_pages), LOAD(bytes_copied),
                   LOAD(prefetched_pages), LOAD(removed_pages), LOAD(eexist));
  if (n < 0 || (size_t)n >= cap) return -1;
  len = (size_t)n;
  for (int i = 0; i < LATENCY_BUCKETS; i++) {
    n = snprintf(buf + len, cap - len, "%s%u", i ? "," : "", latency_le_us[i]);
    if (n < 0 || (size_t)n >= cap - len) return -1;
    len += (size_t)n;
  }
  n = snprintf(buf + len, cap - len, "],\"counts\":[");
  if (n < 0 || (size_t)n >= cap - len) return -1;
  len += (size_t)n;
  for (int i = 0; i <= LATENCY_BUCKETS; i++) {
    n = snprintf(buf + len, cap - len, "%s%llu", i ? "," : "", LOAD(latency_counts[i]));
    if (n < 0 || (size_t)n >= cap - len) return -1;
    len += (size_t)n;
  }
  /* The sum in whole microseconds, rounded: the histogram's unit. */
  n = snprintf(buf + len, cap - len, "],\"sum\":%llu,\"count\":%llu}}\n", (LOAD(latency_sum_ns) + 500) / 1000, LOAD(latency_count));
  if (n < 0 || (size_t)n >= cap - len) return -1;
  return (int)(len + (size_t)n);
}

struct stats_server {
  int listen_fd;
  struct worker_stats *stats;
};

static struct stats_server server;

static void *stats_thread(void *arg) {
  (void)arg;
  char line[1024];
  for (;;) {
    int fd = accept4(server.listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      return NULL;
    }
    int len = stats_format(server.stats, line, sizeof line);
    /* A reader that went away early is its own business (SIGPIPE is ignored; MSG_NOSIGNAL besides). */
    if (len > 0) (void)!send(fd, line, (size_t)len, MSG_NOSIGNAL);
    close(fd);
  }
}

int stats_server_start(const char *path, struct worker_stats *stats, char *err, size_t err_len) {
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) {
    snprintf(err, err_len, "stats socket path too long: %s", path);
    return -1;
  }
  strcpy(addr.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    snprintf(err, err_len, "stats socket: %s", strerror(errno));
    return -1;
  }
  unlink(path);
  mode_t old = umask(0177);
  int rc = bind(fd, (struct sockaddr *)&addr, sizeof addr);
  umask(old);
  if (rc != 0 || listen(fd, 16) != 0) {
    snprintf(err, err_len, "stats socket %s: %s", path, strerror(errno));
    close(fd);
    return -1;
  }
  server.listen_fd = fd;
  server.stats = stats;
  pthread_t thread;
  if (pthread_create(&thread, NULL, stats_thread, NULL) != 0) {
    snprintf(err, err_len, "stats thread: cannot start");
    close(fd);
    return -1;
  }
  pthread_detach(thread);
  return 0;
}
