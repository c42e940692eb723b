#!/usr/bin/env python3
"""Writes the benchmark inputs under WORK, the same bytes (and mtimes) on every run:

  WORK/ctx-copyheavy  5,000 small files (50 dirs x 100, 64..4159 bytes) + 3 x 50 MiB incompressible files
                      (SHAKE-256 streams, so gzip cannot shrink them) + README.txt: 171 MB
  WORK/ctx-small      stamp.txt (the input that multistage's touch and edit scenarios change)
  WORK/secret.txt     the secret passed with --secret id=mysecret (outside every context)

Every file and directory gets mtime 1700000000. Rewritten from scratch each time (a few seconds), so a run
that died with a changed input leaves nothing behind.
Usage: make-context.py WORK
"""
import hashlib, os, shutil, sys

work = sys.argv[1]
PIN = 1700000000
SMALL, BIG, BIG_MIB = 5000, 3, 50
SECRET = b"kiln-bench-SECRET-9f2c4e7a1d\n"


def stream(seed, n):
    return hashlib.shake_256(seed.encode()).digest(n)


def fresh(path):
    if os.path.lexists(path):
        shutil.rmtree(path)
    os.makedirs(path)


c = os.path.join(work, "ctx-copyheavy")
fresh(c)
small = stream("small-files", 20_000_000)
off = 0
for i in range(SMALL):
    d = os.path.join(c, "small", f"d{i // 100:02d}")
    os.makedirs(d, exist_ok=True)
    size = 64 + (i * 2654435761 % 4096)
    with open(os.path.join(d, f"f{i % 100:02d}.bin"), "wb") as f:
        f.write(small[off:off + size])
    off += size
os.makedirs(os.path.join(c, "big"))
for n in range(1, BIG + 1):
    with open(os.path.join(c, "big", f"blob{n}.bin"), "wb") as f:
        f.write(stream(f"big-{n}", BIG_MIB << 20))
with open(os.path.join(c, "README.txt"), "w") as f:
    f.write("copyheavy context\n")

s = os.path.join(work, "ctx-small")
fresh(s)
with open(os.path.join(s, "stamp.txt"), "w") as f:
    f.write("stamp\n")

secret = os.path.join(work, "secret.txt")
with open(secret, "wb") as f:
    f.write(SECRET)
os.chmod(secret, 0o600)

total = 0
for root in (c, s):
    for top, dirs, files in os.walk(root):
        for name in files:
            p = os.path.join(top, name)
            total += os.path.getsize(p) if root == c else 0
            os.utime(p, (PIN, PIN))
    for top, dirs, files in os.walk(root, topdown=False):
        os.utime(top, (PIN, PIN))
os.utime(secret, (PIN, PIN))
print(f"{c}: {SMALL + BIG + 1} files, {total / 1e6:.0f} MB; {s}: 1 file; {secret}")
