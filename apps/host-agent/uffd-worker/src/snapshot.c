/*
 * Loads guest RAM from a snapshot directory and verifies every file it will serve from against the manifest before a
 * single page is served: a worker that served a changed or truncated file would hand the guest silently wrong memory.
 *
 * Layouts (docs/uffd-worker.md):
 *  - template:   manifest.files.memory {bytes, sha256}; guest RAM = DIR/memory.
 *  - checkpoint: manifest.kind + manifest.vm; guest RAM = vm.memoryFilePath (or all zeros when vm.memoryFileIdentity is
 *                `zero` / `zero:<bytes>`) with memory.pages laid over it at the runs of memory.index.
 */
#define _GNU_SOURCE
#include "worker.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int fail(char *err, size_t err_len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
  return -1;
}

/* SIGTERM while hashing a large file ends the worker cleanly (main blocks the signal and leaves it pending). */
static void exit_if_termination_pending(void) {
  sigset_t pending;
  if (sigpending(&pending) == 0 && (sigismember(&pending, SIGTERM) || sigismember(&pending, SIGINT))) exit(0);
}

int page_all_zero(const uint8_t *page) {
  const uint64_t *words = (const uint64_t *)page;
  uint64_t acc = 0;
  for (size_t i = 0; i < GUEST_PAGE_SIZE / sizeof(uint64_t); i++) acc |= words[i];
  return acc == 0;
}

/* Hashes `len` bytes; when `zero_flags` is given, also notes per 4 KiB page whether it is all zeros. */
static int hash_and_scan(const uint8_t *data, uint64_t len, char out[65], uint8_t *zero_flags) {
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
    EVP_MD_CTX_free(ctx);
    return -1;
  }
  const uint64_t chunk = 64 * 1024;
  for (uint64_t at = 0; at < len; at += chunk) {
    uint64_t n = len - at < chunk ? len - at : chunk;
    if (EVP_DigestUpdate(ctx, data + at, n) != 1) {
      EVP_MD_CTX_free(ctx);
      return -1;
    }
    if (zero_flags)
      for (uint64_t p = at; p + GUEST_PAGE_SIZE <= at + n; p += GUEST_PAGE_SIZE) zero_flags[p / GUEST_PAGE_SIZE] = (uint8_t)page_all_zero(data + p);
    if ((at & ((64u << 20) - 1)) == 0) exit_if_termination_pending();
  }
  unsigned char digest[32];
  unsigned int digest_len = 0;
  int ok = EVP_DigestFinal_ex(ctx, digest, &digest_len) == 1 && digest_len == 32;
  EVP_MD_CTX_free(ctx);
  if (!ok) return -1;
  for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", digest[i]);
  return 0;
}

int sha256_hex(const uint8_t *data, uint64_t len, char out[65]) { return hash_and_scan(data, len, out, NULL); }

/* Maps `path` read-only after checking it holds exactly `expected_bytes`. An empty file maps to a dummy pointer. */
static int map_file(const char *path, uint64_t expected_bytes, const uint8_t **data, char *err, size_t err_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(err, err_len, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return fail(err, err_len, "%s: not a regular file", path);
  }
  if ((uint64_t)st.st_size != expected_bytes) {
    close(fd);
    return fail(err, err_len, "%s: %llu bytes, manifest says %llu", path, (unsigned long long)st.st_size, (unsigned long long)expected_bytes);
  }
  if (expected_bytes == 0) {
    close(fd);
    *data = NULL;
    return 0;
  }
  void *map = mmap(NULL, expected_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (map == MAP_FAILED) return fail(err, err_len, "%s: mmap: %s", path, strerror(errno));
  *data = map;
  return 0;
}

static int expect_sha256(const char *path, const uint8_t *data, uint64_t len, const char *expected, uint8_t *zero_flags, char *err,
                         size_t err_len) {
  char actual[65];
  if (hash_and_scan(data, len, actual, zero_flags) != 0) return fail(err, err_len, "%s: sha256 failed", path);
  if (strcmp(actual, expected) != 0) return fail(err, err_len, "%s: sha256 %s, manifest says %s", path, actual, expected);
  return 0;
}

static int is_sha256_hex(const char *s) {
  if (!s || strlen(s) != 64) return 0;
  for (const char *c = s; *c; c++)
    if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f'))) return 0;
  return 1;
}

/* A non-negative integral JSON number that fits u64 exactly (doubles hold integers up to 2^53). */
static int json_u64(const cJSON *item, uint64_t *out) {
  if (!cJSON_IsNumber(item)) return -1;
  double v = item->valuedouble;
  if (v < 0 || v > 9007199254740992.0 || v != (double)(uint64_t)v) return -1;
  *out = (uint64_t)v;
  return 0;
}

/* A file entry of the manifest: {bytes, sha256, path?}; its path relative to the snapshot dir (default: `name`). */
struct file_entry {
  char path[4096];
  uint64_t bytes;
  char sha256[65];
};

static int file_entry(const cJSON *files, const char *role, const char *dir, struct file_entry *entry, char *err, size_t err_len) {
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(files, role);
  if (!cJSON_IsObject(item)) return fail(err, err_len, "manifest lists no files.%s", role);
  const cJSON *sha = cJSON_GetObjectItemCaseSensitive(item, "sha256");
  if (json_u64(cJSON_GetObjectItemCaseSensitive(item, "bytes"), &entry->bytes) != 0 || !cJSON_IsString(sha) || !is_sha256_hex(sha->valuestring))
    return fail(err, err_len, "manifest files.%s needs bytes and a sha256", role);
  strcpy(entry->sha256, sha->valuestring);
  const cJSON *rel = cJSON_GetObjectItemCaseSensitive(item, "path");
  const char *name = cJSON_IsString(rel) ? rel->valuestring : role;
  int n = name[0] == '/' ? snprintf(entry->path, sizeof entry->path, "%s", name) : snprintf(entry->path, sizeof entry->path, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= sizeof entry->path) return fail(err, err_len, "path of files.%s too long", role);
  return 0;
}

static int runs_from_bytes(const uint8_t *data, uint64_t len, const char *path, uint64_t max_pages, struct page_run **runs, size_t *nruns,
                           uint64_t *total_pages, char *err, size_t err_len) {
  if (len % 8 != 0) return fail(err, err_len, "%s: %llu bytes is not a whole number of runs", path, (unsigned long long)len);
  size_t n = len / 8;
  struct page_run *out = calloc(n ? n : 1, sizeof *out);
  if (!out) return fail(err, err_len, "out of memory");
  uint64_t total = 0, next_free = 0;
  for (size_t i = 0; i < n; i++) {
    const uint8_t *r = data + i * 8;
    uint32_t first = (uint32_t)r[0] | (uint32_t)r[1] << 8 | (uint32_t)r[2] << 16 | (uint32_t)r[3] << 24;
    uint32_t count = (uint32_t)r[4] | (uint32_t)r[5] << 8 | (uint32_t)r[6] << 16 | (uint32_t)r[7] << 24;
    if (count == 0 || first < next_free || (uint64_t)first + count > max_pages) {
      free(out);
      return fail(err, err_len, "%s: run %zu (page %u, %u pages) is empty, out of order, overlapping or past guest RAM (%llu pages)", path,
                  i, first, count, (unsigned long long)max_pages);
    }
    out[i].first = first;
    out[i].count = count;
    next_free = (uint64_t)first + count;
    total += count;
  }
  *runs = out;
  *nruns = n;
  *total_pages = total;
  return 0;
}

int read_page_runs(const char *path, uint64_t max_pages, struct page_run **runs, size_t *nruns, uint64_t *total_pages, char *err,
                   size_t err_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(err, err_len, "%s: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (64 << 20)) {
    close(fd);
    return fail(err, err_len, "%s: not a regular file of at most 64 MiB", path);
  }
  uint8_t *data = malloc(st.st_size ? (size_t)st.st_size : 1);
  if (!data) {
    close(fd);
    return fail(err, err_len, "out of memory");
  }
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t r = read(fd, data + got, (size_t)st.st_size - got);
    if (r <= 0) {
      free(data);
      close(fd);
      return fail(err, err_len, "%s: read failed", path);
    }
    got += (size_t)r;
  }
  close(fd);
  int rc = runs_from_bytes(data, got, path, max_pages, runs, nruns, total_pages, err, err_len);
  free(data);
  return rc;
}

static char *read_text(const char *path, char *err, size_t err_len) {
  FILE *f = fopen(path, "re");
  if (!f) {
    fail(err, err_len, "%s: %s", path, strerror(errno));
    return NULL;
  }
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  while (buf) {
    size_t r = fread(buf + len, 1, cap - len - 1, f);
    len += r;
    if (r == 0) break;
    if (len + 1 == cap) {
      if (cap >= (4u << 20)) {
        free(buf);
        buf = NULL;
        fail(err, err_len, "%s: larger than 4 MiB", path);
        break;
      }
      char *grown = realloc(buf, cap * 2);
      if (!grown) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = grown;
      cap *= 2;
    }
  }
  fclose(f);
  if (buf) buf[len] = '\0';
  else if (!err[0]) fail(err, err_len, "out of memory");
  return buf;
}

static int load_template(const cJSON *files, const char *dir, struct guest_memory *mem, char *err, size_t err_len) {
  struct file_entry memory;
  if (file_entry(files, "memory", dir, &memory, err, err_len) != 0) return -1;
  if (memory.bytes == 0 || memory.bytes % GUEST_PAGE_SIZE != 0)
    return fail(err, err_len, "manifest files.memory.bytes %llu is not a positive multiple of %u", (unsigned long long)memory.bytes, GUEST_PAGE_SIZE);
  mem->bytes = memory.bytes;
  mem->pages = memory.bytes / GUEST_PAGE_SIZE;
  mem->page_is_zero = calloc(mem->pages, 1);
  if (!mem->page_is_zero) return fail(err, err_len, "out of memory");
  if (map_file(memory.path, memory.bytes, &mem->base, err, err_len) != 0) return -1;
  mem->base_map_bytes = memory.bytes;
  return expect_sha256(memory.path, mem->base, memory.bytes, memory.sha256, mem->page_is_zero, err, err_len);
}

static int load_checkpoint(const cJSON *manifest, const char *dir, struct guest_memory *mem, char *err, size_t err_len) {
  const cJSON *vm = cJSON_GetObjectItemCaseSensitive(manifest, "vm");
  const cJSON *files = cJSON_GetObjectItemCaseSensitive(manifest, "files");
  const cJSON *keep = cJSON_GetObjectItemCaseSensitive(manifest, "keepMemory");
  if (!cJSON_IsObject(vm) || !cJSON_IsObject(files)) return fail(err, err_len, "checkpoint manifest needs vm and files");
  if (cJSON_IsFalse(keep)) return fail(err, err_len, "checkpoint kept no memory (keepMemory false): nothing to serve");
  uint64_t mib;
  if (json_u64(cJSON_GetObjectItemCaseSensitive(vm, "memoryMib"), &mib) != 0 || mib == 0 || mib > (1u << 22))
    return fail(err, err_len, "checkpoint manifest vm.memoryMib is missing or out of range");
  mem->bytes = mib << 20;
  mem->pages = mem->bytes / GUEST_PAGE_SIZE;
  mem->page_is_zero = calloc(mem->pages, 1);
  if (!mem->page_is_zero) return fail(err, err_len, "out of memory");

  const cJSON *identity = cJSON_GetObjectItemCaseSensitive(vm, "memoryFileIdentity");
  const cJSON *base_path = cJSON_GetObjectItemCaseSensitive(vm, "memoryFilePath");
  if (!cJSON_IsString(identity)) return fail(err, err_len, "checkpoint manifest vm.memoryFileIdentity is missing");
  const char *id = identity->valuestring;
  if (strcmp(id, "zero") == 0 || strncmp(id, "zero:", 5) == 0) {
    /* The all-zero memory file of a VM booted from disk: nothing to read, its size (when recorded) must match. */
    if (id[4] == ':') {
      char *end = NULL;
      unsigned long long size = strtoull(id + 5, &end, 10);
      if (!end || *end || size != mem->bytes)
        return fail(err, err_len, "memoryFileIdentity %s does not match vm.memoryMib (%llu bytes)", id, (unsigned long long)mem->bytes);
    }
    memset(mem->page_is_zero, 1, mem->pages);
  } else {
    const char *expected = strncmp(id, "sha256:", 7) == 0 ? id + 7 : id;
    if (!is_sha256_hex(expected)) return fail(err, err_len, "memoryFileIdentity %s is neither zero nor a sha256", id);
    if (!cJSON_IsString(base_path) || !base_path->valuestring[0]) return fail(err, err_len, "checkpoint manifest vm.memoryFilePath is missing");
    if (map_file(base_path->valuestring, mem->bytes, &mem->base, err, err_len) != 0) return -1;
    mem->base_map_bytes = mem->bytes;
    if (expect_sha256(base_path->valuestring, mem->base, mem->bytes, expected, mem->page_is_zero, err, err_len) != 0) return -1;
  }

  struct file_entry pages, index;
  if (file_entry(files, "memory.pages", dir, &pages, err, err_len) != 0 || file_entry(files, "memory.index", dir, &index, err, err_len) != 0) {
    /* Entries are keyed by file role in CheckpointManifest.files (CHECKPOINT_FILES: "memory.pages", "memory.index"). */
    return -1;
  }
  if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(files, "memory.pages"), "path")))
    snprintf(pages.path, sizeof pages.path, "%s/memory.pages", dir);
  if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(files, "memory.index"), "path")))
    snprintf(index.path, sizeof index.path, "%s/memory.index", dir);

  const uint8_t *index_data = NULL;
  if (map_file(index.path, index.bytes, &index_data, err, err_len) != 0) return -1;
  int rc = index.bytes ? expect_sha256(index.path, index_data, index.bytes, index.sha256, NULL, err, err_len) : 0;
  struct page_run *runs = NULL;
  size_t nruns = 0;
  uint64_t overlay_pages = 0;
  if (rc == 0 && index.bytes == 0) {
    char empty[65];
    sha256_hex((const uint8_t *)"", 0, empty);
    if (strcmp(empty, index.sha256) != 0) rc = fail(err, err_len, "%s: sha256 %s, manifest says %s", index.path, empty, index.sha256);
  }
  if (rc == 0) rc = runs_from_bytes(index_data ? index_data : (const uint8_t *)"", index.bytes, index.path, mem->pages, &runs, &nruns, &overlay_pages, err, err_len);
  if (index_data) munmap((void *)index_data, index.bytes);
  if (rc != 0) return -1;
  if (overlay_pages * GUEST_PAGE_SIZE != pages.bytes) {
    free(runs);
    return fail(err, err_len, "%s: manifest says %llu bytes, memory.index lists %llu pages", pages.path, (unsigned long long)pages.bytes,
                (unsigned long long)overlay_pages);
  }
  uint8_t *overlay_zero = calloc(overlay_pages ? overlay_pages : 1, 1);
  mem->overlay_slot = calloc(mem->pages, sizeof *mem->overlay_slot);
  if (!overlay_zero || !mem->overlay_slot) {
    free(runs);
    free(overlay_zero);
    return fail(err, err_len, "out of memory");
  }
  if (map_file(pages.path, pages.bytes, &mem->overlay, err, err_len) != 0 ||
      (pages.bytes && expect_sha256(pages.path, mem->overlay, pages.bytes, pages.sha256, overlay_zero, err, err_len) != 0)) {
    free(runs);
    free(overlay_zero);
    return -1;
  }
  mem->overlay_map_bytes = pages.bytes;
  uint32_t slot = 0;
  for (size_t r = 0; r < nruns; r++)
    for (uint32_t k = 0; k < runs[r].count; k++, slot++) {
      uint64_t page = (uint64_t)runs[r].first + k;
      mem->overlay_slot[page] = slot + 1;
      mem->page_is_zero[page] = overlay_zero[slot];
    }
  free(runs);
  free(overlay_zero);
  return 0;
}

int load_guest_memory(const char *snapshot_dir, struct guest_memory *mem, char *err, size_t err_len) {
  memset(mem, 0, sizeof *mem);
  char path[4096];
  if (snprintf(path, sizeof path, "%s/manifest.json", snapshot_dir) >= (int)sizeof path) return fail(err, err_len, "snapshot path too long");
  char *text = read_text(path, err, err_len);
  if (!text) return -1;
  cJSON *manifest = cJSON_Parse(text);
  free(text);
  if (!cJSON_IsObject(manifest)) {
    cJSON_Delete(manifest);
    return fail(err, err_len, "%s: not a JSON object", path);
  }
  const cJSON *files = cJSON_GetObjectItemCaseSensitive(manifest, "files");
  int rc;
  if (cJSON_GetObjectItemCaseSensitive(manifest, "kind") && cJSON_GetObjectItemCaseSensitive(manifest, "vm"))
    rc = load_checkpoint(manifest, snapshot_dir, mem, err, err_len);
  else if (cJSON_IsObject(files) && cJSON_GetObjectItemCaseSensitive(files, "memory"))
    rc = load_template(files, snapshot_dir, mem, err, err_len);
  else
    rc = fail(err, err_len, "%s: neither a template snapshot (files.memory) nor a checkpoint (kind, vm)", path);
  cJSON_Delete(manifest);
  if (rc == 0 && mem->base) madvise((void *)mem->base, mem->base_map_bytes, MADV_RANDOM);
  return rc;
}

void free_guest_memory(struct guest_memory *mem) {
  if (mem->base) munmap((void *)mem->base, mem->base_map_bytes);
  if (mem->overlay) munmap((void *)mem->overlay, mem->overlay_map_bytes);
  free(mem->overlay_slot);
  free(mem->page_is_zero);
  memset(mem, 0, sizeof *mem);
}
