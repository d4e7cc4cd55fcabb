"""Requests whose framing two HTTP parsers could read differently (request smuggling), for the
server's unit tests and the live shop's (tests/e2e/test_smuggling.py)."""

from __future__ import annotations


def ambiguous(target: bytes = b"/seen", smuggled: bytes = b"/smuggled") -> dict[str, bytes]:
    """Requests to `target` that two parsers could frame differently, most carrying a second one, to `smuggled`."""
    inner = b"GET %s HTTP/1.1\r\nhost: t\r\n\r\n" % smuggled
    size = b"%d" % len(inner)
    post = b"POST %s HTTP/1.1\r\nhost: t\r\n" % target
    chunked = post + b"transfer-encoding: chunked\r\n\r\n"
    get = b"GET %s HTTP/1.1" % target
    return {
        "content-length and transfer-encoding": post
        + b"content-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        + inner,
        "transfer-encoding and content-length": post
        + b"transfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n0\r\n\r\n"
        + inner,
        "two different content-lengths": post + b"content-length: 0\r\ncontent-length: " + size + b"\r\n\r\n" + inner,
        "two equal content-lengths": post + b"content-length: 3\r\ncontent-length: 3\r\n\r\nabc",
        "a list of content-lengths": post + b"content-length: 0, " + size + b"\r\n\r\n" + inner,
        "a signed content-length": post + b"content-length: +3\r\n\r\nabc" + inner,
        "a negative content-length": post + b"content-length: -3\r\n\r\n" + inner,
        "a non-numeric content-length": post + b"content-length: 0x3\r\n\r\nabc" + inner,
        "an invalid chunk size": chunked + b"zz\r\nabc\r\n0\r\n\r\n" + inner,
        "a chunk size that overflows": chunked + b"1000000000000000a\r\nabc\r\n0\r\n\r\n" + inner,
        "a chunk size with trailing space": chunked + b"3 \r\nabc\r\n0\r\n\r\n" + inner,
        "transfer-encoding gzip, chunked": post + b"transfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + inner,
        "transfer-encoding chunked twice": post
        + b"transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        + inner,
        "transfer-encoding identity": post + b"transfer-encoding: identity\r\n\r\n" + inner,
        "transfer-encoding in HTTP/1.0": post.replace(b"HTTP/1.1", b"HTTP/1.0")
        + b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        + inner,
        "obs-fold with a space": get + b"\r\nhost: t\r\nx-a: 1\r\n transfer-encoding: chunked\r\n\r\n",
        "obs-fold with a tab": post + b"content-length: 0\r\n\t" + size + b"\r\n\r\n" + inner,
        "a bare LF after the request line": get + b"\nhost: t\r\n\r\n",
        "a bare LF after a header": get + b"\r\nhost: t\nx-a: 1\r\n\r\n",
        "bare LFs only": get + b"\nhost: t\n\n",
        "a bare CR": get + b"\rhost: t\r\n\r\n",
        "a space before the colon": post + b"content-length : " + size + b"\r\n\r\n" + inner,
        "a tab before the colon": post + b"transfer-encoding\t: chunked\r\n\r\n0\r\n\r\n",
        "two hosts": get + b"\r\nhost: a\r\nhost: b\r\n\r\n",
    }
