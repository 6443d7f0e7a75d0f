/* Shared between the guest agent addon's source files; see guest_kernel.c for the module itself. */
#ifndef KILN_GUEST_ADDON_H
#define KILN_GUEST_ADDON_H

#include <node_api.h>

/* Throws an Error "<what>: <strerror(err)>" with `code` (errno name) and `errno` set, as Node's fs errors carry. */
napi_value throw_errno(napi_env env, const char *what, int err);
/* Node's name for an errno value ("ENOENT"), so callers can switch on err.code as they do for fs errors. */
const char *errno_code(int err);

napi_value pipe_bytes_available(napi_env env, napi_callback_info info);

napi_value xattr_list(napi_env env, napi_callback_info info);
napi_value xattr_get(napi_env env, napi_callback_info info);
napi_value xattr_set(napi_env env, napi_callback_info info);
napi_value xattr_remove(napi_env env, napi_callback_info info);

#endif
