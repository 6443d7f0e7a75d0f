/*
 * Firecracker's handshake body: a JSON array of GuestRegionUffdMapping
 *   {"base_host_virt_addr": u64, "size": bytes, "offset": bytes into guest RAM, "page_size": bytes}
 * (src/vmm/src/persist.rs). Releases before page_size was added sent `page_size_kib`, which despite its name also
 * carries bytes (Firecracker's own comment on the field); 4 is taken as "4 KiB" too, for a sender that took the name
 * at its word. Only 4 KiB pages are served: hugepage-backed guests need 2 MiB copies from a hugetlbfs source.
 */
#include "worker.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>

static int fail(char *err, size_t err_len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, err_len, fmt, ap);
  va_end(ap);
  return -1;
}

static int json_u64(const cJSON *item, uint64_t *out) {
  if (!cJSON_IsNumber(item)) return -1;
  double v = item->valuedouble;
  if (v < 0 || v > 18446744073709549568.0 || v != (double)(uint64_t)v) return -1;
  *out = (uint64_t)v;
  return 0;
}

/* cJSON parses numbers as doubles: above 2^53 a value could have been rounded, so it is refused (x86-64 user addresses
 * and guest sizes are far below that). */
static int json_exact_u64(const cJSON *item, uint64_t *out) {
  if (json_u64(item, out) != 0) return -1;
  return *out <= 9007199254740992ull ? 0 : -2;
}

int parse_handshake(const char *json, size_t len, uint64_t guest_bytes, struct region *regions, size_t *nregions, char *err,
                    size_t err_len) {
  cJSON *root = cJSON_ParseWithLength(json, len);
  if (!cJSON_IsArray(root)) {
    cJSON_Delete(root);
    return fail(err, err_len, "handshake is not a JSON array of guest memory regions");
  }
  int n = cJSON_GetArraySize(root);
  if (n < 1 || n > MAX_REGIONS) {
    cJSON_Delete(root);
    return fail(err, err_len, "handshake lists %d regions (1..%d accepted)", n, MAX_REGIONS);
  }
  int i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, root) {
    uint64_t base, size, offset, page_size;
    const cJSON *ps = cJSON_GetObjectItemCaseSensitive(item, "page_size");
    if (!ps) ps = cJSON_GetObjectItemCaseSensitive(item, "page_size_kib");
    if (!cJSON_IsObject(item) || json_exact_u64(cJSON_GetObjectItemCaseSensitive(item, "base_host_virt_addr"), &base) != 0 ||
        json_exact_u64(cJSON_GetObjectItemCaseSensitive(item, "size"), &size) != 0 ||
        json_exact_u64(cJSON_GetObjectItemCaseSensitive(item, "offset"), &offset) != 0 || json_u64(ps, &page_size) != 0) {
      cJSON_Delete(root);
      return fail(err, err_len, "handshake region %d needs base_host_virt_addr, size, offset and page_size as integers", i);
    }
    if (page_size == 4) page_size = 4096;
    if (page_size != GUEST_PAGE_SIZE) {
      cJSON_Delete(root);
      return fail(err, err_len, "handshake region %d has page size %llu; only 4096-byte pages are served", i, (unsigned long long)page_size);
    }
    if (size == 0 || base % GUEST_PAGE_SIZE || size % GUEST_PAGE_SIZE || offset % GUEST_PAGE_SIZE || base + size < base) {
      cJSON_Delete(root);
      return fail(err, err_len, "handshake region %d is empty or not page aligned", i);
    }
    if (offset > guest_bytes || size > guest_bytes - offset) {
      cJSON_Delete(root);
      return fail(err, err_len, "handshake region %d (offset %llu, %llu bytes) lies outside guest RAM (%llu bytes)", i, (unsigned long long)offset,
                  (unsigned long long)size, (unsigned long long)guest_bytes);
    }
    for (int j = 0; j < i; j++)
      if (base < regions[j].base + regions[j].size && regions[j].base < base + size) {
        cJSON_Delete(root);
        return fail(err, err_len, "handshake regions %d and %d overlap", j, i);
      }
    regions[i].base = base;
    regions[i].size = size;
    regions[i].offset = offset;
    i++;
  }
  *nregions = (size_t)i;
  cJSON_Delete(root);
  return 0;
}
