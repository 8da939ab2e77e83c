#!/usr/bin/env bash
# A private certificate authority and one certificate per role (scheduler, worker, client)
# for a Dask cluster that speaks TLS only (mutual TLS: each side checks that the other's
# certificate is signed by the CA and is meant for its use).
#
#   cluster/tls/make-certificates.sh DIR [HOSTNAME ...]
#
# Writes
#   DIR/ca/          ca.key, ca.pem: the authority. Keep it on this machine; copy it nowhere.
#   DIR/dask-tls/    what the cluster needs, nothing that can sign certificates:
#                    ca.pem                      every node and the client
#                    scheduler.pem, scheduler.key  the scheduler's node only
#                    worker.pem, worker.key        the worker nodes only
#                    client.pem, client.key        the machine running `flashscenic run` only
# See README.md for where each file goes. HOSTNAMEs (and IP addresses) go into the
# scheduler's and workers' subjectAltName (Dask itself does not check host names).
# Certificates last 365 days; run it again (into a new DIR) to renew them.
set -euo pipefail
DIR=${1:?usage: make-certificates.sh DIR [HOSTNAME ...]}
shift
umask 077  # every file and folder readable by this user only
if [ -e "$DIR/ca" ] || [ -e "$DIR/dask-tls" ]; then
    echo "make-certificates.sh: $DIR already holds certificates; give a new folder" >&2
    exit 1
fi
mkdir -p "$DIR/ca" "$DIR/dask-tls"
CA=$DIR/ca OUT=$DIR/dask-tls
SAN="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
    if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then SAN="$SAN,IP:$name"; else SAN="$SAN,DNS:$name"; fi
done
KEY=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)  # P-256: fast, TLS 1.2 and 1.3

openssl req -x509 "${KEY[@]}" -days 3650 -subj "/CN=flashscenic-dask-ca" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$CA/ca.key" -out "$CA/ca.pem" 2>/dev/null
cp "$CA/ca.pem" "$OUT/ca.pem"

# role, extended key usage. The scheduler and the workers both listen (serverAuth) and
# connect to each other (clientAuth); the client only connects, so its key cannot serve
# as a scheduler or a worker.
issue() {
    openssl req "${KEY[@]}" -subj "/CN=flashscenic-dask-$1" -keyout "$OUT/$1.key" -out "$CA/$1.csr" 2>/dev/null
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$2"
        [ "$1" = client ] || echo "subjectAltName=$SAN"
    } >"$CA/$1.ext"
    openssl x509 -req -in "$CA/$1.csr" -CA "$CA/ca.pem" -CAkey "$CA/ca.key" -CAcreateserial -days 365 \
        -extfile "$CA/$1.ext" -out "$OUT/$1.pem" 2>/dev/null
    rm -f "$CA/$1.csr" "$CA/$1.ext"
}
issue scheduler serverAuth,clientAuth
issue worker serverAuth,clientAuth
issue client clientAuth

echo "CA (keep here, copy nowhere): $CA"
echo "for the cluster: $OUT (scheduler.*: scheduler node, worker.*: worker nodes, client.*: flashscenic run; ca.pem: all)"
