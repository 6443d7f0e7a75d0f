/*
 * pipeBytesAvailable(fd): FIONREAD on a descriptor the agent reads a command's output from.
 *
 * A command's end event is sent when the command itself exits, not when every process holding its output pipe
 * (a `server &` it started) lets go. Everything the command wrote before exiting is by then either read by the
 * agent already or still waiting in the pipe, and FIONREAD says exactly how much is waiting, so the agent can
 * deliver precisely that much before the end event instead of guessing with a quiet period.
 *
 * On a terminal's master side, what the command wrote may still sit in the tty layer's flip buffer, which the
 * kernel moves to the readable buffer in a deferred work item; FIONREAD does not count it. A zero-timeout poll()
 * first makes the kernel finish that work when the readable buffer is empty (n_tty_poll), so a 0 from here means
 * the terminal holds nothing at all. On a pipe the poll changes nothing.
 */
#include <errno.h>
#include <poll.h>
#include <sys/ioctl.h>

#include "addon.h"

napi_value pipe_bytes_available(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "pipeBytesAvailable(fd) takes a non-negative integer");
    return NULL;
  }
  struct pollfd probe = {.fd = fd, .events = POLLIN, .revents = 0};
  if (poll(&probe, 1, 0) < 0) return throw_errno(env, "poll", errno);
  if (probe.revents & POLLNVAL) return throw_errno(env, "poll", EBADF);
  int available = 0;
  if (ioctl(fd, FIONREAD, &available) != 0) return throw_errno(env, "ioctl FIONREAD", errno);
  napi_value result;
  napi_create_int32(env, available, &result);
  return result;
}
