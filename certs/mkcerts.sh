#!/bin/sh
# mkcerts.sh DIR — development PKI for meshgate tests and demos (never for production).
#
# Creates, in DIR (idempotent: existing files are kept, missing ones are made):
#   ca.pem / ca.key            a self-signed test CA (EC P-256, 10 years)
#   server.pem / server.key    server cert, SAN DNS:localhost, IP:127.0.0.1
#   client.pem / client.key    client cert, SAN URI:spiffe://mesh.test/ns/analytics/sa/reporter
#   admin.pem / admin.key      client cert, SAN URI:spiffe://mesh.test/ns/platform/sa/admin
#   nospiffe.pem / nospiffe.key client cert signed by the CA without any URI SAN
# Keys are mode 0600.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
DIR=$1
mkdir -p "$DIR"
cd "$DIR"
umask 077

if [ ! -s ca.pem ] || [ ! -s ca.key ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out ca.key
  openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=meshgate test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
  # a new CA invalidates every leaf made by the old one
  rm -f server.pem client.pem admin.pem nospiffe.pem
fi

leaf() { # name cn san eku
  name=$1 cn=$2 san=$3 eku=$4
  [ -s "$name.pem" ] && [ -s "$name.key" ] && return 0
  openssl ecparam -name prime256v1 -genkey -noout -out "$name.key"
  openssl req -new -key "$name.key" -subj "/CN=$cn" -out "$name.csr"
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\n%s\n' \
    "$eku" "$san" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -days 825 -sha256 -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

leaf server localhost "subjectAltName=DNS:localhost,IP:127.0.0.1" serverAuth
leaf client reporter "subjectAltName=URI:spiffe://mesh.test/ns/analytics/sa/reporter" clientAuth
leaf admin admin "subjectAltName=URI:spiffe://mesh.test/ns/platform/sa/admin" clientAuth
leaf nospiffe nospiffe "subjectAltName=DNS:nospiffe.test" clientAuth
chmod 0644 ./*.pem
echo "$DIR: ca.pem server.pem client.pem admin.pem nospiffe.pem"
