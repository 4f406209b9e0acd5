#!/usr/bin/env python3
"""cloudmount vs `rclone mount --vfs-cache-mode full`, side by side, over one
`rclone serve webdav` server on loopback, directly and through bench/netproxy.py.

Run through bench/run.sh, which builds the release binary first. Everything lives in a
temporary directory that is removed at the end; mounts and processes are cleaned up on
any exit. Only 127.0.0.1 is used.
"""

import argparse
import hashlib
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))

PROCS: list[subprocess.Popen] = []
MOUNTS: list[str] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", method="OPTIONS")
            urllib.request.urlopen(req, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


def is_mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == path for line in f)


def stop(p: subprocess.Popen, timeout: float = 10) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def unmount(path: str) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", path], stderr=subprocess.DEVNULL)
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", path], stderr=subprocess.DEVNULL)


def cleanup() -> None:
    for m in MOUNTS:
        unmount(m)
    for p in PROCS:
        stop(p, 5)


def vm_hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def random_file(path: str, size: int, seed: int) -> None:
    rng = random.Random(seed)
    block = rng.randbytes(MiB)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            # Cheap variation per MiB, so no two blocks are alike.
            f.write(i.to_bytes(8, "little") + block[8:])
        f.write(block[: size % MiB])


# ---------------------------------------------------------------- the tools


class Tool:
    name = "?"

    def __init__(self, work: str, url: str, tag: str, args):
        self.work = os.path.join(work, f"{self.name}-{tag}")
        self.url = url
        self.args = args
        self.mnt = os.path.join(self.work, "mnt")
        os.makedirs(self.mnt)
        self.proc: subprocess.Popen | None = None

    @property
    def root(self) -> str:
        """The directory in the mount that maps to the server's root."""
        return self.mnt

    def wait_mounted(self) -> None:
        deadline = time.time() + 30
        while not (is_mounted(self.mnt) and os.path.isdir(self.root)):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.work}/log")
            if time.time() > deadline:
                raise RuntimeError(f"{self.name} did not mount")
            time.sleep(0.05)

    def stop(self) -> None:
        unmount(self.mnt)
        if self.proc:
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                stop(self.proc)


class Cloudmount(Tool):
    name = "cloudmount"

    def start(self) -> None:
        cfg = os.path.join(self.work, "config.toml")
        with open(cfg, "w") as f:
            f.write(
                "[[connection]]\nname = \"dav\"\ntype = \"webdav\"\n"
                f"settings = {{ url = \"{self.url}\" }}\n"
            )
        cmd = [
            self.args.cloudmount, "mount", self.mnt, "--config", cfg, "--foreground",
            "--state-dir", os.path.join(self.work, "state"),
            "--cache-dir", os.path.join(self.work, "cache"),
            "--upload-delay", str(self.args.write_delay),
        ]
        self.cmdline = " ".join(cmd)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.work, "log"), "w"))
        PROCS.append(self.proc)
        MOUNTS.append(self.mnt)
        self.wait_mounted()

    @property
    def root(self) -> str:
        return os.path.join(self.mnt, "dav")


class RcloneMount(Tool):
    name = "rclone"

    def start(self) -> None:
        conf = os.path.join(self.work, "rclone.conf")
        open(conf, "w").close()
        cmd = [
            "rclone", "mount", ":webdav:", self.mnt, "--config", conf,
            "--webdav-url", self.url,
            "--vfs-cache-mode", "full",
            "--cache-dir", os.path.join(self.work, "cache"),
            "--vfs-write-back", f"{self.args.write_delay}s",
        ]
        self.cmdline = " ".join(cmd)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.work, "log"), "w"))
        PROCS.append(self.proc)
        MOUNTS.append(self.mnt)
        self.wait_mounted()


# ---------------------------------------------------------------- workloads


def seq_read(path: str) -> dict:
    """Time to the first 128 KiB and MB/s over the whole file (1 MiB reads)."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        first = os.read(fd, 128 * 1024)
        ttfb = time.perf_counter() - t0
        total = len(first)
        while True:
            b = os.read(fd, MiB)
            if not b:
                break
            total += len(b)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    return {"ttfb_ms": ttfb * 1000, "mbps": total / MiB / dt, "bytes": total, "secs": dt}


def random_reads(path: str, size: int, n: int, seed: int) -> dict:
    """n reads of 4 KiB, each in its own 8 MiB region of a file never read before (so each
    one is cold for both tools: cloudmount's chunks are 4 MiB), in random order."""
    rng = random.Random(seed)
    region = 8 * MiB
    regions = rng.sample(range(size // region), min(n, size // region))
    offs = [r * region + rng.randrange(0, region // 4096) * 4096 for r in regions]
    fd = os.open(path, os.O_RDONLY)
    lat = []
    try:
        for off in offs:
            t = time.perf_counter()
            b = os.pread(fd, 4096, off)
            lat.append((time.perf_counter() - t) * 1000)
            assert len(b) == 4096
    finally:
        os.close(fd)
    lat.sort()
    return {"n": len(lat), "median_ms": statistics.median(lat),
            "p95_ms": lat[max(0, int(len(lat) * 0.95) - 1)], "mean_ms": statistics.fmean(lat)}


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def wait_on_server(expected: dict[str, int], timeout: float) -> float:
    """Polls the server's directory until every path has its expected size; returns the
    time of that moment (perf_counter)."""
    pending = dict(expected)
    deadline = time.perf_counter() + timeout
    while pending:
        for p, size in list(pending.items()):
            try:
                if os.stat(p).st_size == size:
                    del pending[p]
            except FileNotFoundError:
                pass
        if not pending:
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{len(pending)} files not on the server after {timeout}s, "
                               f"e.g. {next(iter(pending))}")
        time.sleep(0.05)
    return time.perf_counter()


def small_files(tool: Tool, server_root: str, sub: str, n: int, size: int) -> dict:
    """Writes n files of `size` bytes; time until close of the last and until all are on
    the server."""
    d = os.path.join(tool.root, sub)
    payload = os.urandom(size)
    t0 = time.perf_counter()
    os.mkdir(d)
    for i in range(n):
        with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
            f.write(payload)
    written = time.perf_counter() - t0
    expected = {os.path.join(server_root, sub, f"f{i:05}.bin"): size for i in range(n)}
    done = wait_on_server(expected, 600) - t0
    return {"written_s": written, "on_server_s": done}


def tar_extract(tool: Tool, server_root: str, sub: str, tarball: str, members: dict) -> dict:
    d = os.path.join(tool.root, sub)
    os.mkdir(d)
    t0 = time.perf_counter()
    subprocess.run(["tar", "xf", tarball, "-C", d], check=True)
    written = time.perf_counter() - t0
    expected = {os.path.join(server_root, sub, m): s for m, s in members.items()}
    done = wait_on_server(expected, 600) - t0
    return {"written_s": written, "on_server_s": done}


def dd_write(tool: Tool, server_root: str, name: str, src: str, size: int) -> dict:
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={os.path.join(tool.root, name)}", "bs=1M"],
                   check=True, stderr=subprocess.DEVNULL)
    written = time.perf_counter() - t0
    done = wait_on_server({os.path.join(server_root, name): size}, 900) - t0
    return {"written_s": written, "on_server_s": done}


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(4 * MiB):
            h.update(b)
    return h.hexdigest()


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cloudmount", required=True)
    ap.add_argument("--big-mib", type=int, default=512)
    ap.add_argument("--proxy-big-mib", type=int, default=128)
    ap.add_argument("--random-mib", type=int, default=1024)
    ap.add_argument("--random-reads", type=int, default=100)
    ap.add_argument("--tree-files", type=int, default=10_000)
    ap.add_argument("--small-files", type=int, default=1000)
    ap.add_argument("--tar-files", type=int, default=2000)
    ap.add_argument("--dd-mib", type=int, default=512)
    ap.add_argument("--write-delay", type=float, default=2.0,
                    help="cloudmount --upload-delay and rclone --vfs-write-back (s)")
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--rate-mbit", type=float, default=400.0)
    ap.add_argument("--json", help="also write raw results here")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="cloudmount-bench-")
    results: dict = {}
    try:
        run(args, work, results)
    finally:
        cleanup()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def run(args, work: str, results: dict) -> None:
    server_root = os.path.join(work, "server")
    os.makedirs(server_root)
    # --- data on the server
    log("preparing data on the server")
    big = os.path.join(server_root, "big.bin")
    random_file(big, args.big_mib * MiB, 1)
    pbig = os.path.join(server_root, "proxy-big.bin")
    random_file(pbig, args.proxy_big_mib * MiB, 2)
    rnd = {}
    for t in ("cloudmount", "rclone"):
        for tag in ("direct", "proxy"):
            rnd[(t, tag)] = os.path.join(server_root, f"random-{t}-{tag}.bin")
            # Sparse: the server reads zeros without touching the disk; only the
            # client's fetching is measured.
            with open(rnd[(t, tag)], "wb") as f:
                f.truncate(args.random_mib * MiB)
    tree = os.path.join(server_root, "tree")
    per_dir = 100
    for i in range(args.tree_files):
        d = os.path.join(tree, f"d{i // per_dir:03}")
        if i % per_dir == 0:
            os.makedirs(d)
        with open(os.path.join(d, f"f{i:05}.txt"), "w") as f:
            f.write(f"file {i}\n")
    dd_src = os.path.join(work, "dd-source.bin")
    random_file(dd_src, args.dd_mib * MiB, 4)
    tarball = os.path.join(work, "small.tar")
    members = {}
    rng = random.Random(5)
    with tarfile.open(tarball, "w") as tf:
        for i in range(args.tar_files):
            size = rng.randrange(1, 16 * 1024)
            data = rng.randbytes(size)
            name = f"t{i // 200:02}/file{i:05}.dat"
            ti = tarfile.TarInfo(name)
            ti.size = size
            tf.addfile(ti, io.BytesIO(data))
            members[name] = size
    # Warm the server's page cache for what gets read, so both tools see the same server.
    for p in [big, pbig]:
        with open(p, "rb") as f:
            while f.read(8 * MiB):
                pass

    # --- the server and the proxy
    port = free_port()
    rc_conf = os.path.join(work, "serve.conf")
    open(rc_conf, "w").close()
    serve_cmd = ["rclone", "serve", "webdav", "--config", rc_conf, "--addr",
                 f"127.0.0.1:{port}", server_root]
    serve = subprocess.Popen(serve_cmd, stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(work, "serve.log"), "w"))
    PROCS.append(serve)
    wait_http(port)
    proxy_cmd = [sys.executable, os.path.join(HERE, "netproxy.py"), "--listen",
                 "127.0.0.1:0", "--target", f"127.0.0.1:{port}",
                 "--delay-ms", str(args.delay_ms), "--rate-mbit", str(args.rate_mbit)]
    proxy = subprocess.Popen(proxy_cmd, stdout=subprocess.PIPE,
                             stderr=open(os.path.join(work, "proxy.log"), "w"), text=True)
    PROCS.append(proxy)
    pport = int(proxy.stdout.readline().split()[1])
    results["commands"] = {"serve": " ".join(serve_cmd), "proxy": " ".join(proxy_cmd)}

    # --- direct loopback: every workload
    for cls in (Cloudmount, RcloneMount):
        tool = cls(work, f"http://127.0.0.1:{port}/", "direct", args)
        log(f"{tool.name}: direct")
        tool.start()
        results["commands"][tool.name] = tool.cmdline
        r = results.setdefault(tool.name, {})
        r["cold_read"] = seq_read(os.path.join(tool.root, "big.bin"))
        log(f"  cold read {r['cold_read']}")
        r["warm_read"] = seq_read(os.path.join(tool.root, "big.bin"))
        log(f"  warm read {r['warm_read']}")
        r["random"] = random_reads(
            os.path.join(tool.root, os.path.basename(rnd[(tool.name, "direct")])),
            args.random_mib * MiB, args.random_reads, 7)
        log(f"  random {r['random']}")
        r["list_cold_s"] = timed(["ls", "-lR", os.path.join(tool.root, "tree")])
        r["list_warm_s"] = timed(["ls", "-lR", os.path.join(tool.root, "tree")])
        n = int(subprocess.run(f"find '{tool.root}/tree' -type f | wc -l", shell=True,
                               capture_output=True, text=True).stdout)
        assert n == args.tree_files, f"{tool.name} lists {n} files"
        log(f"  listing cold {r['list_cold_s']:.2f}s warm {r['list_warm_s']:.2f}s")
        sub = f"{tool.name}-small"
        r["small"] = small_files(tool, server_root, sub, args.small_files, 4096)
        log(f"  small files {r['small']}")
        sub = f"{tool.name}-tar"
        r["tar"] = tar_extract(tool, server_root, sub, tarball, members)
        log(f"  tar {r['tar']}")
        name = f"{tool.name}-dd.bin"
        r["dd"] = dd_write(tool, server_root, name, dd_src, args.dd_mib * MiB)
        log(f"  dd {r['dd']}")
        r["rss_mib"] = vm_hwm_kib(tool.proc.pid) / 1024
        log(f"  peak RSS {r['rss_mib']:.0f} MiB")
        if isinstance(tool, Cloudmount):
            # The same 1,000 files, with `cloudmount sync` instead of waiting out the delay.
            d = os.path.join(tool.root, "cloudmount-sync")
            os.mkdir(d)
            t0 = time.perf_counter()
            payload = os.urandom(4096)
            for i in range(args.small_files):
                with open(os.path.join(d, f"f{i:05}.bin"), "wb") as f:
                    f.write(payload)
            subprocess.run([args.cloudmount, "sync", tool.mnt], check=True,
                           stdout=subprocess.DEVNULL)
            expected = {os.path.join(server_root, "cloudmount-sync", f"f{i:05}.bin"): 4096
                        for i in range(args.small_files)}
            r["small_sync_s"] = wait_on_server(expected, 600) - t0
            log(f"  small files with sync {r['small_sync_s']:.2f}s")
        tool.stop()
        got = sha256(os.path.join(server_root, name))
        assert got == sha256(dd_src), f"{name} differs on the server"
        os.remove(os.path.join(server_root, name))

    # --- through the WAN-like proxy: cold read, random reads, small files
    for cls in (Cloudmount, RcloneMount):
        tool = cls(work, f"http://127.0.0.1:{pport}/", "proxy", args)
        log(f"{tool.name}: through the proxy")
        tool.start()
        r = results.setdefault(tool.name, {})
        r["proxy_cold_read"] = seq_read(os.path.join(tool.root, "proxy-big.bin"))
        log(f"  cold read {r['proxy_cold_read']}")
        r["proxy_random"] = random_reads(
            os.path.join(tool.root, os.path.basename(rnd[(tool.name, "proxy")])),
            args.random_mib * MiB, max(10, args.random_reads // 3), 8)
        log(f"  random {r['proxy_random']}")
        r["proxy_small"] = small_files(tool, server_root, f"{tool.name}-proxy-small",
                                       args.small_files, 4096)
        log(f"  small files {r['proxy_small']}")
        r["proxy_rss_mib"] = vm_hwm_kib(tool.proc.pid) / 1024
        tool.stop()
    stop(proxy)
    stop(serve)
    print_table(args, results)


def print_table(args, res: dict) -> None:
    c, r = res["cloudmount"], res["rclone"]
    rows = []

    def row(what, a, b, unit, higher_better):
        ratio = (a / b if higher_better else b / a) if a and b else float("nan")
        rows.append((what, f"{a:.1f} {unit}" if a >= 10 else f"{a:.2f} {unit}",
                     f"{b:.1f} {unit}" if b >= 10 else f"{b:.2f} {unit}", f"{ratio:.2f}x"))

    big, pbig = args.big_mib, args.proxy_big_mib
    row(f"cold sequential read, {big} MiB", c["cold_read"]["mbps"], r["cold_read"]["mbps"], "MB/s", True)
    row("  time to first byte (128 KiB)", c["cold_read"]["ttfb_ms"], r["cold_read"]["ttfb_ms"], "ms", False)
    row(f"warm sequential read (2nd open)", c["warm_read"]["mbps"], r["warm_read"]["mbps"], "MB/s", True)
    row(f"cold 4 KiB random read, median ({c['random']['n']} reads)", c["random"]["median_ms"], r["random"]["median_ms"], "ms", False)
    row("  p95", c["random"]["p95_ms"], r["random"]["p95_ms"], "ms", False)
    row(f"ls -lR of {args.tree_files} files, cold", c["list_cold_s"], r["list_cold_s"], "s", False)
    row("  warm (2nd time)", c["list_warm_s"], r["list_warm_s"], "s", False)
    row(f"{args.small_files} x 4 KiB files: all on server", c["small"]["on_server_s"], r["small"]["on_server_s"], "s", False)
    row("  (time to write them)", c["small"]["written_s"], r["small"]["written_s"], "s", False)
    row(f"tar x of {args.tar_files} files: all on server", c["tar"]["on_server_s"], r["tar"]["on_server_s"], "s", False)
    row("  (time for tar x)", c["tar"]["written_s"], r["tar"]["written_s"], "s", False)
    row(f"dd {args.dd_mib} MiB: on server", c["dd"]["on_server_s"], r["dd"]["on_server_s"], "s", False)
    row("  (time for dd)", c["dd"]["written_s"], r["dd"]["written_s"], "s", False)
    row("peak RSS of the daemon (VmHWM)", c["rss_mib"], r["rss_mib"], "MiB", False)
    link = f"{2 * args.delay_ms:g} ms RTT, {args.rate_mbit:g} Mbit/s"
    row(f"[{link}] cold read, {pbig} MiB", c["proxy_cold_read"]["mbps"], r["proxy_cold_read"]["mbps"], "MB/s", True)
    row(f"[{link}] time to first byte", c["proxy_cold_read"]["ttfb_ms"], r["proxy_cold_read"]["ttfb_ms"], "ms", False)
    row(f"[{link}] cold 4 KiB random read, median ({c['proxy_random']['n']} reads)", c["proxy_random"]["median_ms"], r["proxy_random"]["median_ms"], "ms", False)
    row(f"[{link}]   p95", c["proxy_random"]["p95_ms"], r["proxy_random"]["p95_ms"], "ms", False)
    row(f"[{link}] {args.small_files} x 4 KiB files: all on server", c["proxy_small"]["on_server_s"], r["proxy_small"]["on_server_s"], "s", False)
    row(f"[{link}] peak RSS", c["proxy_rss_mib"], r["proxy_rss_mib"], "MiB", False)
    w = [max(len(x[i]) for x in rows + [("workload", "cloudmount", "rclone mount", "ratio")]) for i in range(4)]
    hdr = ("workload", "cloudmount", "rclone mount", "cloudmount advantage")
    print(f"| {hdr[0]:<{w[0]}} | {hdr[1]:>{w[1]}} | {hdr[2]:>{w[2]}} | {hdr[3]} |")
    print(f"|{'-' * (w[0] + 2)}|{'-' * (w[1] + 1)}:|{'-' * (w[2] + 1)}:|{'-' * (len(hdr[3]) + 1)}:|")
    for a, b, cc, d in rows:
        print(f"| {a:<{w[0]}} | {b:>{w[1]}} | {cc:>{w[2]}} | {d:>{len(hdr[3])}} |")
    print("\nratio = how many times better cloudmount is (>1: cloudmount faster/smaller).")
    if c.get("small_sync_s"):
        print(f"cloudmount, {args.small_files} x 4 KiB files with `cloudmount sync`: "
              f"{c['small_sync_s']:.2f} s until all on the server.")


if __name__ == "__main__":
    main()
