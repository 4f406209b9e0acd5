#!/bin/sh
# Install the Debian packages cloudmount and its tests need, if any are missing.
#   fuse3            fusermount3 and /etc/fuse.conf (the mount itself)
#   rclone, apache2  real WebDAV servers the tests run against; rclone mount for benchmarks
#   dovecot-imapd    real IMAP server the tests run against (each test starts its own)
#   openssl          makes the test CA and certificate for IMAP over TLS
#   systemd          systemd-analyze, to check the unit files
#   util-linux/mount mount(8) and umount(8) for the fstab helper test
#   attr, sqlite3, rsync, git  ordinary programs run against the mount
set -eu
PACKAGES="fuse3 rclone apache2 dovecot-imapd openssl systemd mount attr sqlite3 rsync git python3 ca-certificates"

missing=""
for p in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -z "$missing" ]; then
    exit 0
fi
echo "installing:$missing"
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "please install as root: apt-get install -y$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# apache2 and dovecot are only test servers: keep them from starting system instances
# (ports 80, 143 and 993).
if [ -z "$SUDO" ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends $missing
# The package enables dovecot.service (started at boot, or at once when installed through
# sudo); tests run their own Dovecot. Only when this script installed it, so that a
# machine's real mail server is left alone.
case " $missing " in
*" dovecot-imapd "*)
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
    fi
    ;;
esac
