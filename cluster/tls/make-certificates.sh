#!/usr/bin/env bash
# A private certificate authority and one certificate for the Dask scheduler, the workers
# and the `flashscenic run` client, for a cluster that speaks TLS only (mutual TLS: each
# side checks the other's certificate against the CA).
#
#   cluster/tls/make-certificates.sh DIR [HOSTNAME ...]
#
# HOSTNAMEs (and IP addresses) go into the certificate's subjectAltName; give the names by
# which workers and clients reach the scheduler. Keep DIR private (chmod 700); copy it to
# every node (or a shared filesystem only the cluster's users can read). For production,
# prefer certificates from your site's CA.
set -euo pipefail
DIR=${1:?usage: make-certificates.sh DIR [HOSTNAME ...]}
shift
mkdir -p "$DIR"
chmod 700 "$DIR"
SAN="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ ]]; then SAN="$SAN,IP:$name"; else SAN="$SAN,DNS:$name"; fi
done
openssl req -x509 -newkey rsa:4096 -nodes -days 365 -subj "/CN=flashscenic-dask-ca" \
    -keyout "$DIR/ca.key" -out "$DIR/ca.pem"
openssl req -newkey rsa:4096 -nodes -subj "/CN=flashscenic-dask" -keyout "$DIR/dask.key" -out "$DIR/dask.csr"
printf "subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n" "$SAN" >"$DIR/dask.ext"
openssl x509 -req -in "$DIR/dask.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial -days 365 \
    -extfile "$DIR/dask.ext" -out "$DIR/dask.pem"
rm -f "$DIR/dask.csr" "$DIR/dask.ext"
chmod 600 "$DIR"/*.key
echo "CA: $DIR/ca.pem, certificate: $DIR/dask.pem, key: $DIR/dask.key"
