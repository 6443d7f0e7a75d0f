/*
 * Where a sparse file holds data: lseek(SEEK_DATA) / lseek(SEEK_HOLE), which Node's fs does not expose. Firecracker
 * writes a Diff snapshot's guest memory as a sparse file of the guest's size with only the dirtied pages written; the
 * data extents are those pages. Telling a hole from a written page of zeros by content would lose the guest's writes.
 *
 *   dataExtents(fd) -> [[offset, length], ...]   ascending, non-overlapping, length > 0
 *
 * A file system without hole support reports the whole file as one extent (that is what SEEK_DATA/SEEK_HOLE promise).
 * The fd's file offset is put back where it was. Errors are thrown as Error with `code` (e.g. 'EBADF', 'ESPIPE'),
 * `errno` and `syscall`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <node_api.h>

static napi_value throw_errno(napi_env env, const char *syscall, int err) {
  char message[160];
  const char *name = strerrorname_np(err);
  snprintf(message, sizeof message, "%s: %s", syscall, strerror(err));
  napi_value code, msg, error, errno_value, syscall_value;
  if (napi_create_string_utf8(env, name ? name : "EIO", NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_error(env, code, msg, &error) != napi_ok || napi_create_int32(env, err, &errno_value) != napi_ok ||
      napi_set_named_property(env, error, "errno", errno_value) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscall_value) != napi_ok) {
    napi_throw_error(env, NULL, message);
    return NULL;
  }
  napi_throw(env, error);
  return NULL;
}

/* Appends [offset, length] to `list` at `index`; false when N-API failed (an exception is then pending or thrown). */
static int append_extent(napi_env env, napi_value list, uint32_t index, off_t offset, off_t length) {
  napi_value pair, offset_value, length_value;
  return napi_create_array_with_length(env, 2, &pair) == napi_ok && napi_create_int64(env, offset, &offset_value) == napi_ok &&
         napi_create_int64(env, length, &length_value) == napi_ok && napi_set_element(env, pair, 0, offset_value) == napi_ok &&
         napi_set_element(env, pair, 1, length_value) == napi_ok && napi_set_element(env, list, index, pair) == napi_ok;
}

static napi_value data_extents(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "dataExtents(fd) takes a file descriptor");
    return NULL;
  }
  off_t saved = lseek(fd, 0, SEEK_CUR);
  if (saved < 0) return throw_errno(env, "lseek", errno);

  napi_value list;
  if (napi_create_array(env, &list) != napi_ok) {
    napi_throw_error(env, NULL, "dataExtents: cannot build the result");
    return NULL;
  }
  uint32_t count = 0;
  int failure = 0;
  for (off_t position = 0;;) {
    off_t data = lseek(fd, position, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) failure = errno; /* ENXIO: no data at or after `position` (also: position at EOF). */
      break;
    }
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) {
      failure = errno;
      break;
    }
    if (hole <= data) { /* Cannot happen on a file that is not changing under us: stop rather than loop. */
      failure = EIO;
      break;
    }
    if (!append_extent(env, list, count++, data, hole - data)) {
      lseek(fd, saved, SEEK_SET);
      napi_throw_error(env, NULL, "dataExtents: cannot build the result");
      return NULL;
    }
    position = hole;
  }
  if (lseek(fd, saved, SEEK_SET) < 0 && failure == 0) failure = errno;
  if (failure != 0) return throw_errno(env, "lseek", failure);
  return list;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "dataExtents", NAPI_AUTO_LENGTH, data_extents, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "dataExtents", fn) != napi_ok) {
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
