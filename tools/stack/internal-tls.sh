#!/usr/bin/env bash
# The internal plane's CA and service certificates (mTLS between the scheduler, gateway and template builder and the
# host agents; see libs/config/src/internal-tls.ts). One implementation for `npm run up` (apps.sh sources this file) and the test
# stacks (tools/e2e/harness/stack-harness.ts and the host-agent suites run it as a script).
#
#   internal-tls.sh DIR ADDRESSES [SERVICE...]
#
# DIR gets, once: ca.pem + ca-key.pem (0600), and for each SERVICE (default: scheduler gateway host-agent
# template-builder) <service>.pem + <service>-key.pem (0600) whose URI SAN is spiffe://kiln/<service>. ADDRESSES (comma-separated IPs
# and names) go into the host-agent certificate's SANs, so clients that also match host names can. A certificate is
# made again when it is missing, not from this CA, expires within 30 days or has other SANs; the CA when it expires
# within 60 days (which then remakes every certificate).

internal_tls_ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)

# Is DIR/<name>.pem a certificate from DIR's CA, valid for 30 more days, with exactly these SANs?
internal_tls_cert_current() {
  local dir=$1 name=$2 sans=$3
  [ -s "$dir/$name.pem" ] && [ -s "$dir/$name-key.pem" ] &&
    openssl verify -CAfile "$dir/ca.pem" "$dir/$name.pem" >/dev/null 2>&1 &&
    openssl x509 -in "$dir/$name.pem" -noout -checkend $((30 * 86400)) >/dev/null 2>&1 &&
    [ "$(cat "$dir/$name.sans" 2>/dev/null)" = "$sans" ]
}

# ensure_internal_tls DIR ADDRESSES [SERVICE...]: makes what is missing or stale (see the header).
ensure_internal_tls() {
  local dir=$1 addresses=$2
  shift 2
  local services=("$@")
  [ ${#services[@]} -gt 0 ] || services=(scheduler gateway host-agent template-builder)
  mkdir -p "$dir"
  if ! { [ -s "$dir/ca.pem" ] && [ -s "$dir/ca-key.pem" ] && openssl x509 -in "$dir/ca.pem" -noout -checkend $((60 * 86400)) >/dev/null 2>&1; }; then
    (
      umask 077
      openssl req -x509 "${internal_tls_ec[@]}" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" -days 3650 \
        -subj "/CN=Kiln internal CA ($(hostname -s))" \
        -addext 'basicConstraints=critical,CA:TRUE,pathlen:0' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
    ) || { echo "openssl could not make the internal CA in $dir" >&2; return 1; }
    chmod 600 "$dir/ca-key.pem"
    chmod 644 "$dir/ca.pem"
  fi
  local service sans address entry entries
  for service in "${services[@]}"; do
    [[ "$service" =~ ^[a-z0-9-]+$ ]] || { echo "internal-tls: bad service name '$service'" >&2; return 1; }
    sans="URI:spiffe://kiln/$service"
    if [ "$service" = host-agent ]; then
      IFS=, read -r -a entries <<< "$addresses"
      for address in "${entries[@]}"; do
        [ -n "$address" ] || continue
        if [[ "$address" =~ ^[0-9.]+$ || "$address" == *:* ]]; then entry="IP:$address"; else entry="DNS:$address"; fi
        sans="$sans,$entry"
      done
    fi
    internal_tls_cert_current "$dir" "$service" "$sans" && continue
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth,clientAuth' \
      'authorityKeyIdentifier=keyid' "subjectAltName=$sans" > "$dir/$service.ext"
    (
      umask 077
      openssl req -new "${internal_tls_ec[@]}" -keyout "$dir/$service-key.pem" -out "$dir/$service.csr" -subj "/CN=$service" 2>/dev/null &&
        openssl x509 -req -in "$dir/$service.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
          -days 397 -extfile "$dir/$service.ext" -out "$dir/$service.pem" 2>/dev/null
    ) || { rm -f "$dir/$service.csr" "$dir/$service.ext"; echo "openssl could not make the $service certificate in $dir" >&2; return 1; }
    chmod 600 "$dir/$service-key.pem"
    chmod 644 "$dir/$service.pem"
    echo "$sans" > "$dir/$service.sans"
    rm -f "$dir/$service.csr" "$dir/$service.ext"
  done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  [ $# -ge 2 ] || { echo "usage: $0 DIR ADDRESSES [SERVICE...]" >&2; exit 2; }
  ensure_internal_tls "$@"
fi
