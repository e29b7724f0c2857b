#!/usr/bin/env bash
# Builds the root filesystem of an E2B-style `base` template from Debian's packages and
# writes it as a `docker save` archive (one layer) for `warren template import --setuid`.
# Run by `warren template base`, as root, with:
#   OUT      the archive to write
#   SUITE    the Debian release (bookworm)
#   MIRROR   the Debian mirror
#   INCLUDE  extra packages, comma-separated (may be empty)
set -euo pipefail
: "${OUT:?}" "${SUITE:?}" "${MIRROR:?}"
command -v debootstrap >/dev/null || {
  echo "debootstrap is not installed: apt-get install debootstrap" >&2
  exit 2
}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/warren-base.XXXXXX")
trap 'umount -l "$work/rootfs/proc" 2>/dev/null || true; rm -rf "$work"' EXIT
root="$work/rootfs"
# What programs written for E2B's base template expect: python and python3 with pip that
# installs, git, curl, a `user` with passwordless sudo (whom processes run as, in
# /home/user, unless they name another), and the usual shell tools.
packages=python3,python-is-python3,python3-pip,python3-venv,python3-dev,git,curl,wget,ca-certificates,sudo,procps,psmisc,iproute2,iputils-ping,less,nano,vim-tiny,unzip,zip,xz-utils,file,jq,build-essential,locales,tzdata,openssh-client,attr
if [ -n "${INCLUDE:-}" ]; then packages="$packages,$INCLUDE"; fi
echo "debootstrap $SUITE from $MIRROR" >&2
debootstrap --variant=minbase --include="$packages" "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}
echo "configuring" >&2
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }
in_root useradd --create-home --uid 1000 --user-group --shell /bin/bash user
printf 'user ALL=(ALL:ALL) NOPASSWD: ALL\n' >"$root/etc/sudoers.d/user"
chmod 0440 "$root/etc/sudoers.d/user"
# pip installs where it is asked to (into ~/.local for the user, system-wide with sudo),
# as on E2B: no PEP 668 refusal.
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
# The certificate authorities the host added trust (a proxy's, a company's): what the host
# can reach over TLS, the sandbox can too.
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
  in_root update-ca-certificates >/dev/null 2>&1
fi
printf 'en_US.UTF-8 UTF-8\n' >"$root/etc/locale.gen"
in_root locale-gen >/dev/null
printf 'sandbox\n' >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost\n' >"$root/etc/hosts"
# No package lists or caches in the image; `sudo apt-get update` fetches them.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/var/log/*.log "$root/debootstrap"
echo "writing $OUT" >&2
mkdir "$work/image"
# A sandbox gets its own /dev, /proc and /sys: their contents stay out.
tar --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
  -C "$root" -cf "$work/image/layer.tar" .
cat >"$work/image/config.json" <<EOF
{"architecture":"$(dpkg --print-architecture)","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","LANG=C.UTF-8","LC_ALL=C.UTF-8","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt","REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt"],"User":"user","Cmd":["/bin/bash"]},"rootfs":{"type":"layers","diff_ids":["sha256:$(sha256sum "$work/image/layer.tar" | cut -d' ' -f1)"]}}
EOF
printf '[{"Config":"config.json","RepoTags":["warren/base:%s"],"Layers":["layer.tar"]}]\n' "$SUITE" >"$work/image/manifest.json"
tar -C "$work/image" -cf "$OUT.tmp" manifest.json config.json layer.tar
mv "$OUT.tmp" "$OUT"
