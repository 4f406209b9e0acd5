#!/usr/bin/env python3
"""A large mailbox through cloudmount's IMAP provider, against a real Dovecot on loopback.

Seeds a Maildir with N messages (default 50,000), starts a throw-away unprivileged
Dovecot on a free 127.0.0.1 port, and measures:

  - the plain-IMAP limit: one client doing exactly what a listing needs
    (EXAMINE + UID FETCH 1:* (UID INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)]))
  - cloudmount, fresh state: the first `ls -l` of INBOX (every message's metadata and
    BODYSTRUCTURE fetched), the same again (warm, from the metadata store), and after
    a restart of the daemon on the same state (the listing from the store, the
    provider's index used when it lists again);
  - new mail: 10 messages appended, time until the mount shows them (IDLE);
  - the daemon's peak RSS.

Usage: bench/imap.py [--messages N] [--setting 'key = value'] [--cloudmount target/release/cloudmount]
Needs dovecot-imapd (Debian 12), fusermount3, Python >= 3.9. No traffic leaves 127.0.0.1.
Everything lives in one temporary directory, removed at the end.
"""

import argparse
import imaplib
import os
import pwd
import grp
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PROCS: list = []
MOUNTS: list = []


def log(msg: str) -> None:
    print(f"[imap-bench] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_mounted(path: str) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == path for line in f)


def unmount(path: str) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", path], stderr=subprocess.DEVNULL)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-uz", path], stderr=subprocess.DEVNULL)


def cleanup() -> None:
    for m in MOUNTS:
        unmount(m)
    for p in PROCS:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM) if getattr(p, "group", False) else p.terminate()
                p.wait(10)
            except Exception:
                p.kill()


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ---------------------------------------------------------------- Dovecot

CONFIG = """protocols = imap
listen = 127.0.0.1
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = dovecot-bench-{port}
log_path = {dir}/dovecot.log
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    path = anvil-auth-penalty-unused
  }}
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dir}/users
}}
mail_location = maildir:~/Maildir:LAYOUT=fs
mail_fsync = never
mail_max_userip_connections = 100
namespace inbox {{
  inbox = yes
  separator = /
}}
"""


def run_as() -> tuple:
    """Dovecot refuses to serve mail as root: as root it runs as nobody."""
    if os.geteuid() == 0:
        p = pwd.getpwnam("nobody")
    else:
        p = pwd.getpwuid(os.geteuid())
    return p.pw_name, grp.getgrgid(p.pw_gid).gr_name, p.pw_uid, p.pw_gid


def message(i: int) -> bytes:
    day = 1 + i % 28
    body = "".join(f"line {j} of message {i}: lorem ipsum dolor sit amet\r\n" for j in range(20))
    return (
        f"From: sender{i % 97}@example.com\r\nTo: you@example.com\r\n"
        f"Subject: bench message {i} about topic {i % 131}\r\n"
        f"Date: Mon, {day} Jan 2024 10:{i % 60:02d}:00 +0000\r\n"
        f"Message-ID: <{i}@bench.example>\r\n\r\n{body}"
    ).encode()


def seed_maildir(maildir: str, n: int) -> None:
    cur = os.path.join(maildir, "cur")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(maildir, sub), exist_ok=True)
    base = 1_700_000_000
    for i in range(n):
        data = message(i)
        name = f"{base + i}.M{i}P1.bench,S={len(data)}:2,S"
        with open(os.path.join(cur, name), "wb") as f:
            f.write(data)
        # INTERNALDATE of a maildir message is its file's mtime.
        os.utime(os.path.join(cur, name), (base + i * 60, base + i * 60))


def chown_tree(path: str, uid: int, gid: int) -> None:
    for root, dirs, files in os.walk(path):
        os.lchown(root, uid, gid)
        for name in files:
            os.lchown(os.path.join(root, name), uid, gid)


def start_dovecot(work: str, n: int) -> tuple:
    user, group, uid, gid = run_as()
    d = os.path.join(work, "dovecot")
    home = os.path.join(d, "home", "bench")
    os.makedirs(home)
    port = free_port()
    with open(os.path.join(d, "users"), "w") as f:
        f.write(f"bench:{{PLAIN}}bench-pass:{uid}:{gid}::{home}::\n")
    with open(os.path.join(d, "dovecot.conf"), "w") as f:
        f.write(CONFIG.format(dir=d, port=port, user=user, group=group))
    log(f"seeding {n} messages")
    seed_maildir(os.path.join(home, "Maildir"), n)
    chown_tree(work, uid, gid)
    os.chmod(work, 0o755)

    def demote():
        os.setsid()
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    p = subprocess.Popen(
        ["/usr/sbin/dovecot", "-F", "-c", os.path.join(d, "dovecot.conf")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, "dovecot.stderr"), "w"), preexec_fn=demote,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    p.group = True
    PROCS.append(p)
    deadline = time.time() + 20
    while True:
        try:
            imaplib.IMAP4("127.0.0.1", port).logout()
            return port, p
        except OSError:
            if time.time() > deadline or p.poll() is not None:
                raise RuntimeError("Dovecot did not start: see " + work)
            time.sleep(0.05)


def plain_imap_listing(port: int) -> float:
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login("bench", "bench-pass")
    t0 = time.perf_counter()
    c.select("INBOX", readonly=True)
    typ, data = c.uid(
        "FETCH", "1:*", "(UID INTERNALDATE RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    took = time.perf_counter() - t0
    assert typ == "OK", typ
    c.logout()
    return took


# ---------------------------------------------------------------- cloudmount


class Mount:
    def __init__(self, work: str, port: int, binary: str, extra: str):
        self.work = work
        self.mnt = os.path.join(work, "mnt")
        os.makedirs(self.mnt, exist_ok=True)
        pw = os.path.join(work, "password")
        with open(pw, "w") as f:
            f.write("bench-pass")
        os.chmod(pw, 0o600)
        self.cfg = os.path.join(work, "config.toml")
        with open(self.cfg, "w") as f:
            f.write(
                "[[connection]]\nname = \"mail\"\ntype = \"imap\"\n"
                f"settings = {{ host = \"127.0.0.1\", port = {port}, tls = \"none\", "
                f"user = \"bench\", password_file = \"{pw}\"{extra} }}\n")
        self.binary = binary
        self.proc = None

    def start(self) -> None:
        cmd = [self.binary, "mount", self.mnt, "--config", self.cfg, "--foreground",
               "--state-dir", os.path.join(self.work, "state"),
               "--cache-dir", os.path.join(self.work, "cache")]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(self.work, "log"), "a"))
        PROCS.append(self.proc)
        MOUNTS.append(self.mnt)
        deadline = time.time() + 30
        while not is_mounted(self.mnt):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("cloudmount did not mount: see " + self.work + "/log")
            time.sleep(0.05)

    def stop(self) -> None:
        unmount(self.mnt)
        self.proc.wait(30)


def ls_l(path: str) -> tuple:
    t0 = time.perf_counter()
    out = subprocess.run(["ls", "-l", path], capture_output=True, check=True).stdout
    return time.perf_counter() - t0, out.count(b"\n") - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--setting", action="append", default=[],
                    help='another setting of the connection, e.g. --setting "attachments = false"')
    ap.add_argument("--cloudmount", default=os.environ.get(
        "CLOUDMOUNT_BIN", "target/release/cloudmount"))
    args = ap.parse_args()
    binary = os.path.abspath(args.cloudmount)
    work = tempfile.mkdtemp(prefix="cloudmount-imap-bench-")
    try:
        port, _ = start_dovecot(work, args.messages)
        # Dovecot indexes a new Maildir on the first look: not what is measured.
        log("Dovecot builds its index (first EXAMINE, not measured)")
        t_index = plain_imap_listing(port)
        t_plain = min(plain_imap_listing(port) for _ in range(3))
        extra = "".join(f", {kv}" for kv in args.setting)
        m = Mount(os.path.join(work, "cm"), port, binary, extra)
        m.start()
        inbox = os.path.join(m.mnt, "mail", "INBOX")
        t_cold, n_cold = ls_l(inbox)
        t_warm, n_warm = ls_l(inbox)
        rss_first = vm_hwm_mib(m.proc.pid)
        m.stop()
        m.start()
        t_restart, n_restart = ls_l(inbox)
        rss_restart = vm_hwm_mib(m.proc.pid)
        # New mail: 10 messages; the mount shows them when IDLE wakes the poller.
        c = imaplib.IMAP4("127.0.0.1", port)
        c.login("bench", "bench-pass")
        t0 = time.perf_counter()
        for i in range(10):
            c.append("INBOX", None, None, message(args.messages + i))
        c.logout()
        want = args.messages + 10
        while True:
            took, n = ls_l(inbox)
            if n >= want:
                break
            if time.perf_counter() - t0 > 120:
                raise RuntimeError(f"new mail not shown after 120 s ({n} of {want})")
            time.sleep(0.1)
        t_new = time.perf_counter() - t0
        rss = vm_hwm_mib(m.proc.pid)
        m.stop()
        # Attachments folders are counted by ls too: a plain message has none.
        rows = [
            ("Dovecot's own first index of the Maildir (not cloudmount)", f"{t_index:.2f} s", ""),
            ("plain IMAP: EXAMINE + UID FETCH of what a listing needs (limit)", f"{t_plain:.2f} s", "1.0"),
            (f"cloudmount first `ls -l` ({n_cold} entries)", f"{t_cold:.2f} s", f"{t_cold / t_plain:.1f}× the limit"),
            ("cloudmount `ls -l` again (warm)", f"{t_warm:.3f} s", f"{t_warm / t_plain:.2f}× the limit"),
            ("cloudmount `ls -l` after a restart", f"{t_restart:.3f} s", f"{t_restart / t_plain:.2f}× the limit"),
            ("10 new messages: append → shown in `ls` (IDLE)", f"{t_new:.2f} s", ""),
            ("daemon peak RSS: first listing", f"{rss_first:.0f} MiB", ""),
            ("daemon peak RSS: restart and listing", f"{rss_restart:.0f} MiB", ""),
            ("daemon peak RSS: … and new mail listed again", f"{rss:.0f} MiB", ""),
        ]
        assert n_cold == n_warm == n_restart == args.messages, (n_cold, n_warm, n_restart)
        print(f"\n{args.messages} messages in INBOX, Dovecot {subprocess.run(['/usr/sbin/dovecot', '--version'], capture_output=True, text=True).stdout.strip()}, {os.cpu_count()} cores\n")
        print("| workload | time | ratio |\n|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]} | {r[2]} |")
    finally:
        cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
