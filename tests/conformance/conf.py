"""What the conformance tests share: paths, the strict client, raw encodings, one agent per test.

Every frame the agent sends is decoded by sbxwire's strict client (tests/integration/sbxwire.py),
which fails on invalid UTF-8 in a str, on a message shape §5 does not allow and on a frame order
§8/§9 forbid, so every conformance test also checks those rules on whatever the agent sends it.
"""
import os
import sys
import tempfile
import unittest
import warnings

warnings.simplefilter("ignore", ResourceWarning)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "../.."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import sbxwire as w  # noqa: E402

BUILD = os.environ.get("SBX_BUILD", os.path.join(ROOT, "build"))
AGENT = os.path.join(BUILD, "bin", "sbx-agent")
DOC = os.path.join(ROOT, "protocol", "PROTOCOL.md")


def raw_str(b):
    """msgpack str header + @b as is (even when @b is not UTF-8): what a sloppy client sends."""
    n = len(b)
    head = bytes([0xA0 | n]) if n < 32 else b"\xd9" + bytes([n])
    return head + b


def map_raw(pairs):
    """A msgpack fixmap from (key, already-encoded value) pairs, keys repeated as given."""
    return bytes([0x80 | len(pairs)]) + b"".join(w.pack(k) + v for k, v in pairs)


def request_raw(rid, method, params_bytes):
    """A request frame; @rid is an int, or bytes holding an already-encoded id."""
    rid = rid if isinstance(rid, bytes) else w.pack(rid)
    return w.frame(b"\x94\x00" + rid + w.pack(method) + params_bytes)


class AgentCase(unittest.TestCase):
    """A fresh agent per test (started from this directory, not "/"), one connection that has
    done hello (unless HELLO is False), and a scratch directory."""

    HELLO = True

    def setUp(self):
        self.agent = w.Agent(AGENT)
        self.conn = self.agent.connect(hello=self.HELLO)
        self.tmp = tempfile.mkdtemp(prefix="sbx-conf-")

    def tearDown(self):
        self.agent.finish(self, self.conn, self.tmp)

    def err(self, method, params=None, conn=None):
        """The error map of a request that must fail."""
        with self.assertRaises(w.RemoteError) as cm:
            (conn or self.conn).call(method, params)
        return cm.exception.err

    def response(self, rid, conn=None):
        """The raw [1, id, error, result] message for @rid."""
        c = conn or self.conn
        return c.wait_for(lambda m: m[0] == 1 and m[1] == rid, "response %d" % rid)
