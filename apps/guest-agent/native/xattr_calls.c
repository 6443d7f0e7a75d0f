/*
 * Extended attributes, which Node has no API for: the agent stores envd's file metadata (envd >= 0.6.2) as
 * `user.e2b.<key>` attributes.
 *
 *   listXattrs(target)               -> Promise<string[]>   attribute names
 *   getXattr(target, name)           -> Promise<Buffer>     value
 *   setXattr(target, name, value)    -> Promise<void>       value is a Buffer or a string
 *   removeXattr(target, name)        -> Promise<void>
 *
 * `target` is a path (symlinks followed, as envd reads metadata) or an open file descriptor (the upload writes
 * through the descriptor it holds, so a concurrent rename cannot redirect it). Every call runs on libuv's thread
 * pool: on a FUSE or network mount one syscall can take as long as the server wants, and the agent's event loop
 * serves every other sandbox request meanwhile. Failures reject with an Error carrying `code` ("ENOTSUP",
 * "ENODATA", ...), `errno` and `syscall`, like Node's own fs errors.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#include "addon.h"

/* The kernel's limits (XATTR_SIZE_MAX, XATTR_LIST_MAX): nothing larger can be stored or listed. */
#define MAX_XATTR_BYTES 65536
#define MAX_PATH_BYTES 4096
#define MAX_NAME_BYTES 255
/* A value or list that changes size between the size query and the read is read again, a few times at most. */
#define MAX_SIZE_RACES 4

typedef enum { OP_LIST, OP_GET, OP_SET, OP_REMOVE } xattr_op;

typedef struct {
  xattr_op op;
  int fd;     /* >= 0: the call acts on this descriptor */
  char *path; /* otherwise on this path */
  char *name;
  char *data; /* OP_SET: the value; OP_GET / OP_LIST: the result */
  size_t data_len;
  int err;
  napi_deferred deferred;
  napi_async_work work;
} xattr_job;

static const char *syscall_name(const xattr_job *job) {
  static const char *by_path[] = {"listxattr", "getxattr", "setxattr", "removexattr"};
  static const char *by_fd[] = {"flistxattr", "fgetxattr", "fsetxattr", "fremovexattr"};
  return job->fd >= 0 ? by_fd[job->op] : by_path[job->op];
}

static ssize_t size_query(const xattr_job *job) {
  if (job->op == OP_LIST) return job->fd >= 0 ? flistxattr(job->fd, NULL, 0) : listxattr(job->path, NULL, 0);
  return job->fd >= 0 ? fgetxattr(job->fd, job->name, NULL, 0) : getxattr(job->path, job->name, NULL, 0);
}

static ssize_t read_into(const xattr_job *job, char *buf, size_t size) {
  if (job->op == OP_LIST) return job->fd >= 0 ? flistxattr(job->fd, buf, size) : listxattr(job->path, buf, size);
  return job->fd >= 0 ? fgetxattr(job->fd, job->name, buf, size) : getxattr(job->path, job->name, buf, size);
}

/* OP_LIST and OP_GET: ask for the size, then read; a racing change shows up as ERANGE and is retried. */
static void read_variable(xattr_job *job) {
  for (int attempt = 0; attempt < MAX_SIZE_RACES; attempt++) {
    ssize_t size = size_query(job);
    if (size < 0) {
      job->err = errno;
      return;
    }
    if (size == 0) {
      job->data_len = 0;
      return;
    }
    if (size > MAX_XATTR_BYTES) {
      job->err = E2BIG;
      return;
    }
    char *buf = malloc((size_t)size);
    if (buf == NULL) {
      job->err = ENOMEM;
      return;
    }
    ssize_t got = read_into(job, buf, (size_t)size);
    if (got >= 0) {
      job->data = buf;
      job->data_len = (size_t)got;
      return;
    }
    int err = errno;
    free(buf);
    if (err != ERANGE) {
      job->err = err;
      return;
    }
  }
  job->err = ERANGE;
}

static void execute(napi_env env, void *data) {
  (void)env;
  xattr_job *job = data;
  int rc = 0;
  switch (job->op) {
    case OP_LIST:
    case OP_GET:
      read_variable(job);
      return;
    case OP_SET:
      rc = job->fd >= 0 ? fsetxattr(job->fd, job->name, job->data, job->data_len, 0)
                        : setxattr(job->path, job->name, job->data, job->data_len, 0);
      break;
    case OP_REMOVE:
      rc = job->fd >= 0 ? fremovexattr(job->fd, job->name) : removexattr(job->path, job->name);
      break;
  }
  if (rc != 0) job->err = errno;
}

static void free_job(napi_env env, xattr_job *job) {
  if (job->work != NULL) napi_delete_async_work(env, job->work);
  free(job->path);
  free(job->name);
  free(job->data);
  free(job);
}

static napi_value job_error(napi_env env, const xattr_job *job) {
  char message[MAX_PATH_BYTES + MAX_NAME_BYTES + 128];
  const char *call = syscall_name(job);
  if (job->fd >= 0) {
    snprintf(message, sizeof message, "%s fd %d%s%s: %s", call, job->fd, job->name ? " " : "", job->name ? job->name : "",
             strerror(job->err));
  } else {
    snprintf(message, sizeof message, "%s '%s'%s%s: %s", call, job->path, job->name ? " " : "", job->name ? job->name : "",
             strerror(job->err));
  }
  napi_value text, error, code, errno_value, syscall;
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, NULL, text, &error);
  napi_create_string_utf8(env, errno_code(job->err), NAPI_AUTO_LENGTH, &code);
  napi_create_int32(env, -job->err, &errno_value);
  napi_create_string_utf8(env, call, NAPI_AUTO_LENGTH, &syscall);
  napi_set_named_property(env, error, "code", code);
  napi_set_named_property(env, error, "errno", errno_value);
  napi_set_named_property(env, error, "syscall", syscall);
  return error;
}

/* The NUL-separated name list of listxattr as an array of strings. */
static napi_value name_array(napi_env env, const char *list, size_t len) {
  napi_value array;
  napi_create_array(env, &array);
  uint32_t index = 0;
  size_t start = 0;
  for (size_t i = 0; i < len; i++) {
    if (list[i] != '\0') continue;
    if (i > start) {
      napi_value name;
      napi_create_string_utf8(env, list + start, i - start, &name);
      napi_set_element(env, array, index++, name);
    }
    start = i + 1;
  }
  return array;
}

static void complete(napi_env env, napi_status status, void *data) {
  xattr_job *job = data;
  napi_value result = NULL;
  if (status != napi_ok) {
    napi_value text;
    napi_create_string_utf8(env, "extended attribute call was cancelled", NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, NULL, text, &result);
    napi_reject_deferred(env, job->deferred, result);
  } else if (job->err != 0) {
    napi_reject_deferred(env, job->deferred, job_error(env, job));
  } else {
    if (job->op == OP_LIST) {
      result = name_array(env, job->data, job->data_len);
    } else if (job->op == OP_GET) {
      napi_create_buffer_copy(env, job->data_len, job->data, NULL, &result);
    } else {
      napi_get_undefined(env, &result);
    }
    napi_resolve_deferred(env, job->deferred, result);
  }
  free_job(env, job);
}

/* Copies a JS string argument into a fresh C string of at most max_bytes bytes; false (and a thrown error) if not. */
static bool copy_string(napi_env env, napi_value value, size_t max_bytes, const char *what, char **out) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &len) != napi_ok) {
    char message[96];
    snprintf(message, sizeof message, "%s must be a string", what);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  if (len == 0 || len > max_bytes) {
    char message[96];
    snprintf(message, sizeof message, "%s must be 1 to %zu bytes", what, max_bytes);
    napi_throw_range_error(env, NULL, message);
    return false;
  }
  char *copy = malloc(len + 1);
  if (copy == NULL) {
    throw_errno(env, what, ENOMEM);
    return false;
  }
  napi_get_value_string_utf8(env, value, copy, len + 1, &len);
  if (strlen(copy) != len) {
    free(copy);
    char message[96];
    snprintf(message, sizeof message, "%s must not contain NUL", what);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  *out = copy;
  return true;
}

/* Reads the target argument: a file descriptor (number) or a path (string). */
static bool read_target(napi_env env, napi_value value, xattr_job *job) {
  napi_valuetype type;
  napi_typeof(env, value, &type);
  if (type == napi_number) {
    int32_t fd;
    napi_get_value_int32(env, value, &fd);
    if (fd < 0) {
      napi_throw_range_error(env, NULL, "file descriptor must be non-negative");
      return false;
    }
    job->fd = fd;
    return true;
  }
  job->fd = -1;
  return copy_string(env, value, MAX_PATH_BYTES, "path", &job->path);
}

static bool read_value(napi_env env, napi_value value, xattr_job *job) {
  bool is_buffer = false;
  napi_is_buffer(env, value, &is_buffer);
  if (is_buffer) {
    void *bytes;
    size_t len;
    napi_get_buffer_info(env, value, &bytes, &len);
    if (len > MAX_XATTR_BYTES) {
      napi_throw_range_error(env, NULL, "value is larger than 64 KiB");
      return false;
    }
    job->data = malloc(len > 0 ? len : 1);
    if (job->data == NULL) {
      throw_errno(env, "value", ENOMEM);
      return false;
    }
    memcpy(job->data, bytes, len);
    job->data_len = len;
    return true;
  }
  size_t len = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "value must be a Buffer or a string");
    return false;
  }
  if (len > MAX_XATTR_BYTES) {
    napi_throw_range_error(env, NULL, "value is larger than 64 KiB");
    return false;
  }
  job->data = malloc(len + 1);
  if (job->data == NULL) {
    throw_errno(env, "value", ENOMEM);
    return false;
  }
  napi_get_value_string_utf8(env, value, job->data, len + 1, &len);
  job->data_len = len;
  return true;
}

static napi_value start(napi_env env, napi_callback_info info, xattr_op op) {
  static const size_t wanted_args[] = {1, 2, 3, 2};
  static const char *usage[] = {
      "listXattrs(target)",
      "getXattr(target, name)",
      "setXattr(target, name, value)",
      "removeXattr(target, name)",
  };
  size_t argc = 3;
  napi_value argv[3];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != wanted_args[op]) {
    char message[96];
    snprintf(message, sizeof message, "%s takes %zu argument(s)", usage[op], wanted_args[op]);
    napi_throw_type_error(env, NULL, message);
    return NULL;
  }
  xattr_job *job = calloc(1, sizeof *job);
  if (job == NULL) return throw_errno(env, usage[op], ENOMEM);
  job->op = op;
  bool ok = read_target(env, argv[0], job);
  if (ok && op != OP_LIST) ok = copy_string(env, argv[1], MAX_NAME_BYTES, "name", &job->name);
  if (ok && op == OP_SET) ok = read_value(env, argv[2], job);
  napi_value promise = NULL, resource_name;
  if (ok) {
    napi_create_string_utf8(env, usage[op], NAPI_AUTO_LENGTH, &resource_name);
    ok = napi_create_promise(env, &job->deferred, &promise) == napi_ok &&
         napi_create_async_work(env, NULL, resource_name, execute, complete, job, &job->work) == napi_ok &&
         napi_queue_async_work(env, job->work) == napi_ok;
    if (!ok) {
      /* A promise that was created but will never settle is unreachable: only its deferred leaks, and this
         happens only when the engine itself is failing. */
      free_job(env, job);
      napi_throw_error(env, NULL, "could not queue the extended attribute call");
      return NULL;
    }
    return promise;
  }
  free_job(env, job);
  return NULL;
}

napi_value xattr_list(napi_env env, napi_callback_info info) { return start(env, info, OP_LIST); }
napi_value xattr_get(napi_env env, napi_callback_info info) { return start(env, info, OP_GET); }
napi_value xattr_set(napi_env env, napi_callback_info info) { return start(env, info, OP_SET); }
napi_value xattr_remove(napi_env env, napi_callback_info info) { return start(env, info, OP_REMOVE); }
