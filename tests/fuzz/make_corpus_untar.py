#!/usr/bin/env python3
"""Write the seed corpus for fuzz_untar (tests/fuzz/corpus/untar): tar archives for
transfer.upload_tree's extraction, valid and hostile.

Input format (see fuzz_untar.c): byte 0 = flags (bit 0 preserve_owner, bits 1-2 umask, bit 3 as
uid 1000, bits 4-6 chunk size, bit 7 all queued first), then the archive. The destination is
/dev/shm/untar/root; beside it /dev/shm/untar/canary holds a file f and a directory d, which the
hostile seeds aim at.

Usage: make_corpus_untar.py [DIR]   (default: corpus/untar beside this script)
"""
import io
import os
import sys
import tarfile

CANARY = "/dev/shm/untar/canary"

# Flag bits.
OWNER = 0x01
UMASK077, UMASK0, UMASK_UNKNOWN = 0x02, 0x04, 0x06
USER = 0x08
CHUNK1, CHUNK511, CHUNK512, CHUNK4K, CHUNK7, CHUNK64K, CHUNKVAR = (x << 4 for x in range(1, 8))
EAGER = 0x80


def member(name, kind="file", data=b"", mode=None, link="", uid=0, gid=0, mtime=1700000000,
           pax=None):
    ti = tarfile.TarInfo(name)
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
               "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE}[kind]
    ti.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    ti.linkname = link
    ti.uid, ti.gid, ti.mtime = uid, gid, mtime
    ti.size = len(data) if kind == "file" else 0
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def archive(members, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.isfile() else None)
    return trim(buf.getvalue())


def trim(tar):
    """@tar without tarfile's padding to 10 KiB: its blocks, then the two end-of-archive blocks."""
    end = len(tar)
    while end >= 512 and tar[end - 512:end] == bytes(512):
        end -= 512
    return tar[:end] + bytes(1024)


def header_checksum(h):
    h = bytearray(h)
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def with_field(tar, offset, width, value):
    """The archive with the first header's field at @offset replaced by @value (raw bytes)."""
    h = bytearray(tar[:512])
    h[offset:offset + width] = value.ljust(width, b"\0")[:width]
    return header_checksum(h) + tar[512:]


def base256(v, width):
    """A GNU base-256 number field (two's complement, high bit of the first byte set)."""
    raw = (v % (1 << (8 * width))).to_bytes(width, "big")
    return bytes([raw[0] | 0x80]) + raw[1:]


def seeds():
    s = {}
    f = member
    s["plain"] = (0, archive([f("a.txt", data=b"hello\n"), f("b.bin", data=bytes(range(256)) * 3),
                              f("empty")]))
    s["nested"] = (CHUNK512, archive([f("d/", "dir"), f("d/e/", "dir", mode=0o700),
                                      f("d/e/f", data=b"x" * 700), f("implicit/p/q", data=b"q")]))
    s["dots"] = (CHUNK1, archive([f("./", "dir"), f("./a//b/./c", data=b"c"), f("a/.", "dir"),
                                  f(".", "dir"), f("a/b/", "dir", mode=0o750)]))
    s["symlinks"] = (CHUNK7, archive([f("t", data=b"t"), f("rel", "sym", link="t"),
                                      f("up", "sym", link="../canary/f"),
                                      f("abs", "sym", link=CANARY + "/f"),
                                      f("dangling", "sym", link="nowhere/at/all")]))
    s["hardlinks"] = (0, archive([f("a", data=b"aaaa"), f("h1", "hard", link="a"),
                                  f("d/h2", "hard", link="./a"), f("h3", "hard", link="h1")]))
    s["dotdot"] = (0, archive([f("ok", data=b"1"), f("../canary/f", data=b"pwned")]))
    s["dotdot_deep"] = (CHUNK4K, archive([f("a/../../canary/x", data=b"pwned")]))
    s["absolute"] = (0, archive([f(CANARY + "/f", data=b"pwned")]))
    s["gnu_longname"] = (0, archive([f("L" * 150 + "/" + "n" * 120, data=b"long"),
                                     f("s", "sym", link="T" * 300)], tarfile.GNU_FORMAT))
    s["pax_longname"] = (CHUNKVAR, archive([f("P" * 200 + "/" + "q" * 200, data=b"pax"),
                                            f("hl", "hard", link="P" * 200 + "/" + "q" * 200)],
                                           tarfile.PAX_FORMAT))
    s["name_too_long"] = (0, archive([f("x/" * 2100 + "f", data=b"deep")], tarfile.PAX_FORMAT))
    s["component_too_long"] = (0, archive([f("c" * 300, data=b"c")], tarfile.PAX_FORMAT))
    s["write_through_symlink"] = (0, archive([f("l", "sym", link="../canary"),
                                              f("l/f", data=b"pwned")]))
    s["dir_through_symlink"] = (USER, archive([f("l", "sym", link=CANARY + "/d"),
                                               f("l/x/", "dir")]))
    s["symlink_replaced_by_file"] = (0, archive([f("l", "sym", link="../canary/f"),
                                                 f("l", data=b"mine")]))
    s["hardlink_outside"] = (0, archive([f("h", "hard", link="../canary/f")]))
    s["hardlink_abs"] = (0, archive([f("h", "hard", link=CANARY + "/f")]))
    s["hardlink_via_symlink"] = (0, archive([f("l", "sym", link="../canary"),
                                             f("h", "hard", link="l/f")]))
    s["hardlink_to_symlink"] = (0, archive([f("l", "sym", link=CANARY + "/f"),
                                            f("h", "hard", link="l"), f("h2", "hard", link="h")]))
    s["hardlink_to_dir"] = (0, archive([f("d/", "dir"), f("h", "hard", link="d")]))
    s["hardlink_self"] = (0, archive([f("a", data=b"a"), f("a", "hard", link="a")]))
    s["hardlink_then_replace"] = (0, archive([f("a", data=b"old"), f("b", "hard", link="a"),
                                              f("a", data=b"new!")]))
    s["dir_replaced_by_symlink"] = (0, archive([f("d/", "dir"), f("d/x", data=b"x"),
                                                f("d", "sym", link="../canary")]))
    s["symlink_replaced_by_dir"] = (0, archive([f("d", "sym", link="../canary/d"),
                                                f("d/", "dir", mode=0o700), f("d/y", data=b"y")]))
    s["file_replaced_by_dir"] = (EAGER, archive([f("x", data=b"x"), f("x/", "dir"),
                                                 f("x/y", data=b"y")]))
    s["dir_replaced_by_file"] = (0, archive([f("x/", "dir"), f("x", data=b"x")]))
    s["readonly_dirs"] = (USER, archive([f("ro/", "dir", mode=0o555), f("ro/f", data=b"f"),
                                         f("none/", "dir", mode=0o000),
                                         f("none/sub/", "dir", mode=0o000),
                                         f("none/sub/g", data=b"g", mode=0o000)]))
    s["regress-parent-listed-after-child"] = (USER, archive([f("a/b/", "dir", mode=0o755), f("a/b/c", data=b"c"),
                                              f("a/", "dir", mode=0o000)]))
    s["regress-dir-listed-twice"] = (OWNER, archive([f("d/", "dir", mode=0o700, uid=5, gid=6, mtime=1000),
                                      f("d/", "dir", mode=0o751, uid=7, gid=8, mtime=2000)]))
    s["modes"] = (UMASK077, archive([f("suid", data=b"s", mode=0o4755),
                                     f("sgid/", "dir", mode=0o2775), f("sgid/f", data=b"f"),
                                     f("sticky/", "dir", mode=0o1777),
                                     f("zero", data=b"0", mode=0)]))
    s["owners"] = (OWNER | EAGER | CHUNK1, archive([f("u", data=b"u", uid=1234, gid=99),
                                                    f("d/", "dir", uid=5, gid=5),
                                                    f("l", "sym", link="u", uid=42, gid=43)]))
    s["regress-owner-beyond-32-bits"] = (OWNER, archive([f("u", data=b"u",
                                             pax={"uid": "4294967296", "gid": "4294967297"})],
                                          tarfile.PAX_FORMAT))
    s["umask_unknown"] = (UMASK_UNKNOWN | CHUNK64K, archive([f("a", data=b"a", mode=0o600),
                                                             f("b/", "dir", mode=0o700)]))
    s["umask0_user"] = (UMASK0 | USER, archive([f("a", data=b"a", mode=0o666),
                                                f("x/y/z", data=b"z")]))
    s["specials"] = (0, archive([f("fifo", "fifo"), f("new/dir/chr", "chr"),
                                 f("after", data=b"still extracted")]))
    s["times"] = (0, archive([f("old", data=b"o", mtime=0), f("future", data=b"f", mtime=1 << 33),
                              f("pax_ns", data=b"n", pax={"mtime": "1700000000.123456789",
                                                          "atime": "12.5"})], tarfile.PAX_FORMAT))
    s["sparse"] = (0, archive([f("sp", data=b"0123456789", pax={
        "GNU.sparse.map": "0,5,100000,5", "GNU.sparse.size": "200000",
        "GNU.sparse.numblocks": "2"})], tarfile.PAX_FORMAT))
    s["same_name_twice"] = (CHUNK511, archive([f("a", data=b"first"), f("a", data=b"second!"),
                                               f("a", "sym", link="x"), f("a", data=b"3")]))
    s["user_owner"] = (USER | OWNER, archive([f("mine", data=b"m", uid=1000, gid=1000),
                                              f("f", data=b"f", uid=5, gid=5)]))
    s["user_owner_dir"] = (USER | OWNER, archive([f("d/", "dir", uid=5, gid=5)]))
    s["user_owner_symlink"] = (USER | OWNER, archive([f("l", "sym", link="x", uid=5, gid=5)]))
    s["symlink_empty_target"] = (0, archive([f("l", "sym", link="")]))
    s["dir_component_too_long"] = (0, archive([f("c" * 300 + "/", "dir")], tarfile.PAX_FORMAT))
    s["sparse_huge_size"] = (0, archive([f("sp", data=b"0123456789", pax={
        "GNU.sparse.map": "0,10", "GNU.sparse.size": str((1 << 63) - 1),
        "GNU.sparse.numblocks": "1"})], tarfile.PAX_FORMAT))
    s["sparse_far_offset"] = (0, archive([f("sp", data=b"0123456789", pax={
        "GNU.sparse.map": "%d,10" % (1 << 62), "GNU.sparse.size": str((1 << 62) + 10),
        "GNU.sparse.numblocks": "1"})], tarfile.PAX_FORMAT))
    s["empty"] = (0, b"")
    s["end_blocks_only"] = (0, bytes(1024))
    s["trailing_garbage"] = (0, archive([f("a", data=b"a")]) + b"garbage after the end" * 10)
    s["truncated"] = (0, archive([f("a", data=b"A" * 2000)])[:1200])
    s["not_tar"] = (0, b"this is not a tar archive at all\n" * 20)

    # Size fields tarfile will not write: negative and huge (base-256), and the octal maximum.
    one = archive([f("neg", data=b"")])
    s["size_negative"] = (0, with_field(one, 124, 12, base256(-1, 12)))
    s["size_huge"] = (0, with_field(one, 124, 12, base256(1 << 40, 12)))
    s["size_octal_max"] = (0, with_field(one, 124, 12, b"77777777777\0"))
    s["regress-owner-negative"] = (OWNER, with_field(archive([f("u", data=b"")]), 108, 8, base256(-1, 8)))
    s["mtime_negative"] = (0, with_field(archive([f("m", data=b"")]), 136, 12, base256(-5, 12)))
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus",
                                                             "untar")
    os.makedirs(out, exist_ok=True)
    for name, (flags, data) in seeds().items():
        with open(os.path.join(out, name), "wb") as fp:
            fp.write(bytes([flags]) + data)


if __name__ == "__main__":
    main()
