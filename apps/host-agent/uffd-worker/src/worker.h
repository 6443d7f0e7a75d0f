/*
 * kiln-uffd-worker: serves a Firecracker VM's guest memory from a Kiln snapshot directory through userfaultfd.
 * See docs/uffd-worker.md for the protocol, the snapshot layouts and the counters.
 */
#ifndef KILN_UFFD_WORKER_H
#define KILN_UFFD_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_PAGE_SIZE 4096u
/* Exit code of every refusal (bad snapshot, bad handshake, bad arguments); 0 is a clean end. */
#define EXIT_REFUSED 2

/* Guest RAM as the snapshot directory describes it, verified against its manifest. */
struct guest_memory {
  uint64_t bytes;
  uint64_t pages;
  /* The base image mapped read-only, or NULL for an all-zero base. */
  const uint8_t *base;
  uint64_t base_map_bytes;
  /* memory.pages mapped read-only (checkpoint layout), or NULL. */
  const uint8_t *overlay;
  uint64_t overlay_map_bytes;
  /* Per guest page: 0 = the base's page, k > 0 = page k-1 of the overlay. NULL without an overlay. */
  uint32_t *overlay_slot;
  /* Per guest page: 1 when its content is all zeros (served with UFFDIO_ZEROPAGE). */
  uint8_t *page_is_zero;
};

/* Where a guest page's bytes come from: NULL means the page is all zeros. */
static inline const uint8_t *guest_page_source(const struct guest_memory *mem, uint64_t page) {
  if (mem->page_is_zero[page]) return NULL;
  if (mem->overlay_slot && mem->overlay_slot[page]) return mem->overlay + (uint64_t)(mem->overlay_slot[page] - 1) * GUEST_PAGE_SIZE;
  return mem->base + page * GUEST_PAGE_SIZE;
}

/* A run of guest pages (memory.index and prefetch file format: u32 LE first page, u32 LE count). */
struct page_run {
  uint32_t first;
  uint32_t count;
};

/* Fills `err` (one line, no newline) and returns -1 on failure. */
int load_guest_memory(const char *snapshot_dir, struct guest_memory *mem, char *err, size_t err_len);
void free_guest_memory(struct guest_memory *mem);
/* Reads and validates a memory.index-format file against `max_pages`. Caller frees *runs. */
int read_page_runs(const char *path, uint64_t max_pages, struct page_run **runs, size_t *nruns, uint64_t *total_pages, char *err,
                   size_t err_len);
/* sha256 of a file as lowercase hex, optionally noting per page whether it is all zeros. */
int sha256_hex(const uint8_t *data, uint64_t len, char out[65]);
int page_all_zero(const uint8_t *page);

/* A guest memory region of the peer as the handshake announced it (it can move and shrink: UNMAP, REMAP). */
struct region {
  uint64_t base;
  uint64_t size;
  /* Offset in guest RAM (the snapshot memory file) of `base`. */
  uint64_t offset;
};

#define MAX_REGIONS 256

/* Parses Firecracker's handshake body; fills `err` and returns -1 on anything it does not accept. */
int parse_handshake(const char *json, size_t len, uint64_t guest_bytes, struct region *regions, size_t *nregions, char *err,
                    size_t err_len);

/* Counters exported on the stats socket. Atomic: the fault loop, the prefetch thread and the stats thread share them. */
#define LATENCY_BUCKETS 11
extern const unsigned latency_le_us[LATENCY_BUCKETS];

enum worker_state { STATE_VERIFYING, STATE_WAITING, STATE_SERVING, STATE_DONE };

struct worker_stats {
  _Atomic int state;
  atomic_uint_fast64_t faults, copied_pages, zero_pages, bytes_copied, prefetched_pages, removed_pages, eexist;
  atomic_uint_fast64_t latency_counts[LATENCY_BUCKETS + 1];
  atomic_uint_fast64_t latency_sum_ns, latency_count;
};

void stats_record_latency(struct worker_stats *stats, uint64_t ns);
/* One JSON line (with '\n'); returns its length or -1 when `cap` is too small. */
int stats_format(struct worker_stats *stats, char *buf, size_t cap);
/* Serves the stats socket on a thread of its own until the process exits. */
int stats_server_start(const char *path, struct worker_stats *stats, char *err, size_t err_len);

#endif
