"""The runtime <-> worker channel: whole messages whatever the socket splits, clear ends, no waiting forever."""

import json
import socket
import struct
import threading

import pytest

from runtime.channel import Channel, ChannelClosed, ChannelTimeout


@pytest.fixture
def pair():
    left, right = socket.socketpair()
    yield Channel(left), right
    left.close()
    right.close()


def test_messages_split_and_joined_by_the_socket_arrive_whole(pair):
    channel, raw = pair
    messages = [{"id": i, "text": "é" * i} for i in range(50)] + [{"big": "x" * 5_000_000}]
    data = b"".join(struct.pack("!I", len(body)) + body for body in (json.dumps(m).encode() for m in messages))
    writer = threading.Thread(target=lambda: [raw.sendall(data[i:i + 7_777]) for i in range(0, len(data), 7_777)])
    writer.start()
    assert [channel.receive(10) for _ in messages] == messages
    writer.join()


def test_a_round_trip_with_the_other_end(pair):
    channel, raw = pair
    other = Channel(raw)
    channel.send({"op": "env", "id": 3, "nan": float("nan")})
    assert other.receive(5)["id"] == 3


def test_nothing_within_the_timeout_is_a_timeout_and_the_channel_stays_usable(pair):
    channel, raw = pair
    with pytest.raises(ChannelTimeout):
        channel.receive(0.05)
    Channel(raw).send({"late": True})
    assert channel.receive(5) == {"late": True}


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x02\xff\xfe"], ids=["not-json", "not-utf8"])
def test_garbage_from_the_other_end_is_a_closed_channel_not_a_crash(pair, garbage):
    channel, raw = pair
    raw.sendall(garbage)
    with pytest.raises(ChannelClosed, match="unreadable message"):
        channel.receive(5)


def test_the_other_end_closing_is_a_closed_channel_on_receive_and_send(pair):
    channel, raw = pair
    raw.close()
    with pytest.raises(ChannelClosed):
        channel.receive(5)
    with pytest.raises(ChannelClosed):
        for _ in range(100):  # the first sends may still land in the buffer
            channel.send({"x": "y" * 100_000})


def test_raw_parts_cross_as_they_are_beside_the_json(pair):
    channel, raw = pair
    blobs = [b'{"timestamp": "x"}', b"", b"\x00\xff not utf-8 \x00", "é".encode() * 1000]
    Channel(raw).send({"op": "batch", "id": 7}, blobs)
    assert channel.receive(5) == {"op": "batch", "id": 7, "blobs": blobs}


def test_raw_parts_that_do_not_add_up_are_an_unreadable_message(pair):
    channel, raw = pair
    body = b'{"blob_sizes": [5]}\x00abc'
    raw.sendall(struct.pack("!I", len(body)) + body)
    with pytest.raises(ChannelClosed, match="unreadable message"):
        channel.receive(5)
