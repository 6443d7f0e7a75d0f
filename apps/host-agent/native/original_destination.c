/*
 * The host agent's one call Node has no API for: getsockopt(SO_ORIGINAL_DST) on an accepted TCP socket. The host
 * redirects a sandbox's web traffic to the egress proxy with an nftables `redirect`; conntrack remembers where the
 * guest was going, and this reads it back so the proxy connects to exactly that address and port.
 *
 *   originalDestination(fd) -> { address: 'a.b.c.d', port: n }
 *
 * Throws (with errno text) when the socket has no NAT record (ENOENT: it was not redirected) or is not IPv4.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <node_api.h>

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_value code, msg, error;
  if (napi_create_string_utf8(env, err == ENOENT ? "ENOENT" : "ESYSCALL", NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_error(env, code, msg, &error) != napi_ok) {
    napi_throw_error(env, NULL, message);
    return NULL;
  }
  napi_throw(env, error);
  return NULL;
}

static napi_value original_destination(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
      napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "originalDestination(fd) takes a file descriptor");
    return NULL;
  }
  struct sockaddr_in destination;
  socklen_t length = sizeof destination;
  memset(&destination, 0, sizeof destination);
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &destination, &length) != 0) return throw_errno(env, "getsockopt(SO_ORIGINAL_DST)", errno);
  if (destination.sin_family != AF_INET) return throw_errno(env, "getsockopt(SO_ORIGINAL_DST)", EAFNOSUPPORT);
  char address[INET_ADDRSTRLEN];
  if (inet_ntop(AF_INET, &destination.sin_addr, address, sizeof address) == NULL) return throw_errno(env, "inet_ntop", errno);

  napi_value result, address_value, port_value;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_string_utf8(env, address, NAPI_AUTO_LENGTH, &address_value) != napi_ok ||
      napi_create_uint32(env, ntohs(destination.sin_port), &port_value) != napi_ok ||
      napi_set_named_property(env, result, "address", address_value) != napi_ok ||
      napi_set_named_property(env, result, "port", port_value) != napi_ok) {
    napi_throw_error(env, NULL, "originalDestination: cannot build the result");
    return NULL;
  }
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_value fn;
  if (napi_create_function(env, "originalDestination", NAPI_AUTO_LENGTH, original_destination, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "originalDestination", fn) != napi_ok) {
    return NULL;
  }
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
