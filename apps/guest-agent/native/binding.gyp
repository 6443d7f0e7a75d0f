{
  "targets": [
    {
      "target_name": "guest_kernel",
      "sources": ["guest_kernel.c", "pipe_fd.c", "xattr_calls.c"],
      "cflags": ["-Wall", "-Wextra", "-Werror", "-O2"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
