"""The handler's captured output behaves like the standard streams handlers expect."""

import sys

from runtime.capture import Tail, captured


def test_text_bytes_and_print_all_land_in_the_tail_and_only_the_end_is_kept():
    tail = Tail(limit=20)
    with captured(tail):
        print("a" * 100)
        sys.stdout.buffer.write(b"bytes \xff ok\n")
        sys.stderr.write("err\n")
        sys.stdout.flush()
        assert sys.stdout.encoding == "utf-8" and not sys.stdout.isatty()
    assert tail.text().endswith("bytes \ufffd ok\nerr\n") and "earlier characters not kept" in tail.text()
    assert sys.stdout is not tail


def test_the_standard_streams_come_back_even_when_the_handler_replaced_them():
    saved = sys.stdout
    with open("/dev/null", "w") as elsewhere, captured(Tail(100)):
        sys.stdout = elsewhere
    assert sys.stdout is saved
