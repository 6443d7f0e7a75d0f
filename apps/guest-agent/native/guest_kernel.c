/*
 * The guest agent's two privileged calls after a snapshot restore, done in-process so the
 * sandbox-create path forks nothing (under TCG a fork+exec right after a restore costs
 * hundreds of milliseconds of re-translation):
 *
 *   setRealtimeClock(epochMs)  the clone wakes up with the template's wall clock.
 *   reseedRandom(seed)         every clone of a snapshot resumes with the same kernel CRNG
 *                              state and the same OpenSSL DRBG state in this process, so two
 *                              sandboxes would draw identical "random" bytes. The host's seed
 *                              is credited to the kernel's input pool, the CRNG is reseeded at
 *                              once, and Node's OpenSSL is reseeded on top of that.
 *
 * The same addon also carries the calls the agent needs on every host, VM or not, that Node has no API for:
 * FIONREAD on a command's output pipe (pipe_fd.c) and extended attributes for file metadata (xattr_calls.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include <openssl/rand.h>

#include "addon.h"

#define MIN_SEED_BYTES 16
#define MAX_SEED_BYTES 512

const char *errno_code(int err) {
  switch (err) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EIO: return "EIO";
    case E2BIG: return "E2BIG";
    case EBADF: return "EBADF";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENOTTY: return "ENOTTY";
    case ENOSPC: return "ENOSPC";
    case EROFS: return "EROFS";
    case ERANGE: return "ERANGE";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ELOOP: return "ELOOP";
    case ENODATA: return "ENODATA";
    case ENOTSUP: return "ENOTSUP"; /* == EOPNOTSUPP on Linux */
    case EDQUOT: return "EDQUOT";
    default: return "EUNKNOWN";
  }
}

napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_value text, error, code, errno_value;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, NULL, text, &error);
  napi_create_string_utf8(env, errno_code(err), NAPI_AUTO_LENGTH, &code);
  napi_create_int32(env, -err, &errno_value);
  napi_set_named_property(env, error, "code", code);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_throw(env, error);
  return NULL;
}

static napi_value set_realtime_clock(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  double epoch_ms;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_double(env, argv[0], &epoch_ms) != napi_ok || !isfinite(epoch_ms) || epoch_ms < 0) {
    napi_throw_type_error(env, NULL, "setRealtimeClock(epochMs) takes a finite, non-negative number");
    return NULL;
  }
  struct timespec ts;
  ts.tv_sec = (time_t)(epoch_ms / 1000.0);
  ts.tv_nsec = (long)((epoch_ms - (double)ts.tv_sec * 1000.0) * 1e6);
  if (ts.tv_nsec < 0) ts.tv_nsec = 0;
  if (ts.tv_nsec > 999999999L) ts.tv_nsec = 999999999L;
  if (clock_settime(CLOCK_REALTIME, &ts) != 0) return throw_errno(env, "clock_settime", errno);
  return NULL;
}

static napi_value reseed_random(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_buffer = false;
  void *seed = NULL;
  size_t seed_len = 0;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_is_buffer(env, argv[0], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[0], &seed, &seed_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "reseedRandom(seed) takes a Buffer");
    return NULL;
  }
  if (seed_len < MIN_SEED_BYTES || seed_len > MAX_SEED_BYTES) {
    napi_throw_range_error(env, NULL, "reseedRandom: seed must be 16 to 512 bytes");
    return NULL;
  }

  struct rand_pool_info *pool = calloc(1, sizeof *pool + seed_len);
  if (pool == NULL) return throw_errno(env, "reseedRandom", ENOMEM);
  pool->entropy_count = (int)(seed_len * 8);
  pool->buf_size = (int)seed_len;
  memcpy(pool->buf, seed, seed_len);

  int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
  int err = 0;
  const char *what = NULL;
  if (fd < 0) {
    err = errno, what = "open /dev/urandom";
  } else if (ioctl(fd, RNDADDENTROPY, pool) != 0) {
    err = errno, what = "RNDADDENTROPY";
  } else if (ioctl(fd, RNDRESEEDCRNG) != 0) {
    err = errno, what = "RNDRESEEDCRNG";
  }
  if (fd >= 0) close(fd);
  explicit_bzero(pool->buf, seed_len);
  free(pool);
  if (what != NULL) return throw_errno(env, what, err);

  /* The DRBG reseeds from the (now reseeded) kernel and mixes the seed in; Node's child DRBGs
     follow their parent on their next use. */
  RAND_add(seed, (int)seed_len, (double)seed_len);
  return NULL;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"setRealtimeClock", NULL, set_realtime_clock, NULL, NULL, NULL, napi_enumerable, NULL},
    {"reseedRandom", NULL, reseed_random, NULL, NULL, NULL, napi_enumerable, NULL},
    {"pipeBytesAvailable", NULL, pipe_bytes_available, NULL, NULL, NULL, napi_enumerable, NULL},
    {"listXattrs", NULL, xattr_list, NULL, NULL, NULL, napi_enumerable, NULL},
    {"getXattr", NULL, xattr_get, NULL, NULL, NULL, napi_enumerable, NULL},
    {"setXattr", NULL, xattr_set, NULL, NULL, NULL, napi_enumerable, NULL},
    {"removeXattr", NULL, xattr_remove, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
