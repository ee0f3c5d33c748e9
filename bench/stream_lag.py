#!/usr/bin/env python3
"""The FARMWATCH stream for bench/correlate.

`republish SRC DST`: what the sensors published into the stream on SRC (observations, events
and clocks, with their subjects and headers, `Nats-Msg-Id` included), published again to DST
at packet-time speed: each sensor's messages in their order, all sensors' interleaved by
packet time (an observation's `Farmwatch-Ts`, a clock's `ts_ns`; an event goes with what its
sensor sent before it), as N live sensors would send them. Prints the wall seconds it took.

`lag URL`: the observations each sensor published and the lag of every alert the correlator
published, as `key value` lines.

An alert about packet time T could leave the correlator only once every sensor had published
a clock past T (DESIGN §7: an observation is applied once every producer's clock has passed
it; a sensor that ended holds nothing back from its end marker on). So its lag is the time
JetStream stored the alert minus the latest of those clock messages' stored times: what the
correlator adds between the sensors' publishing and the alert, its merge included.

    stream_lag.py republish SRC_URL DST_URL
    stream_lag.py lag NATS_URL
"""

import asyncio
import bisect
import datetime
import json
import sys
import time

import nats
from nats.js.api import DeliverPolicy


def ns(dt):
    """A datetime as integer nanoseconds since the epoch."""
    delta = dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


def packet_ns(rfc3339):
    """An event's `ts` (RFC 3339, microseconds, Z) as nanoseconds."""
    dt = datetime.datetime.strptime(rfc3339, "%Y-%m-%dT%H:%M:%S.%fZ")
    return ns(dt.replace(tzinfo=datetime.timezone.utc))


async def read(js, subject, keep):
    """Every message on `subject`, from the stream's start, through an ordered consumer."""
    info = await js.stream_info("FARMWATCH", subjects_filter=subject)
    total = sum((info.state.subjects or {}).values())
    sub = await js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    seen = 0
    while seen < total:
        msg = await sub.next_msg(timeout=10)
        seen += 1
        keep(msg)
    await sub.unsubscribe()


async def republish(src, dst):
    nc = await nats.connect(src)
    js = nc.jetstream()
    sent = {}  # sensor -> packet time of its latest message
    msgs = []

    def keep(msg):
        if msg.subject.split(".")[1] not in ("obs", "events", "clock"):
            return  # a correlator's alerts
        sensor = msg.subject.split(".", 2)[2]
        headers = dict(msg.headers or {})
        if ".clock." in msg.subject:
            at = json.loads(msg.data)["ts_ns"]
        elif "Farmwatch-Ts" in headers:
            at = int(headers["Farmwatch-Ts"])
        else:
            at = 0
        # A sensor's messages keep their order: none goes before one it followed.
        at = max(at, sent.get(sensor, 0))
        sent[sensor] = at
        msgs.append((at, len(msgs), msg.subject, msg.data, headers))

    await read(js, "farmwatch.>", keep)
    await nc.close()
    msgs.sort()

    nc = await nats.connect(dst)
    js = nc.jetstream()
    # The stream as the sensors would have made it; later messages land in it.
    try:
        await js.add_stream(name="FARMWATCH", subjects=["farmwatch.>"], allow_direct=True,
                            duplicate_window=3600.0)
    except Exception:
        pass
    start = time.monotonic()
    first = msgs[0][0] if msgs else 0
    for at, _, subject, data, headers in msgs:
        delay = (at - first) / 1e9 - (time.monotonic() - start)
        if delay > 0.001:
            await nc.flush()
            await asyncio.sleep(delay)
        await nc.publish(subject, data, headers=headers)
    await nc.flush()
    print(f"{time.monotonic() - start:.3f}")
    await nc.close()


async def lag(url):
    nc = await nats.connect(url)
    js = nc.jetstream()

    obs = await js.stream_info("FARMWATCH", subjects_filter="farmwatch.obs.>")
    for subject, count in sorted((obs.state.subjects or {}).items()):
        print(f"observations {subject.split('.', 2)[2]} {count}")

    clocks = {}  # sensor -> ([ts_ns], [stored_ns]) in stream order
    ends = {}  # sensor -> stored_ns of its end marker

    def clock(msg):
        sensor = msg.subject.split(".", 2)[2]
        c = json.loads(msg.data)
        stored = ns(msg.metadata.timestamp)
        ts, at = clocks.setdefault(sensor, ([], []))
        ts.append(c["ts_ns"])
        at.append(stored)
        if c.get("end"):
            ends[sensor] = stored

    await read(js, "farmwatch.clock.>", clock)
    alerts = []
    await read(js, "farmwatch.alerts",
               lambda m: alerts.append((ns(m.metadata.timestamp), packet_ns(json.loads(m.data)["ts"]))))
    await nc.close()

    # A clock's packet time may repeat or (from a retried publish) step back; the first
    # message past T is the first in stream order whose running maximum passes T.
    ready_at = {}
    for sensor, (ts, at) in clocks.items():
        top, marks = 0, []
        for t in ts:
            top = max(top, t)
            marks.append(top)
        ready_at[sensor] = (marks, at)

    lags = []
    for stored, t in alerts:
        needed = 0
        for sensor, (marks, at) in ready_at.items():
            i = bisect.bisect_right(marks, t)
            needed = max(needed, at[i] if i < len(at) else ends.get(sensor, at[-1]))
        lags.append((stored - needed) / 1e9)
    lags.sort()
    print(f"alerts {len(lags)}")
    if lags:
        q = lambda p: lags[min(len(lags) - 1, int(p * len(lags)))]
        print(f"lag_p50_s {q(0.50):.3f}")
        print(f"lag_p99_s {q(0.99):.3f}")
        print(f"lag_max_s {lags[-1]:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["republish"] and len(sys.argv) == 4:
        asyncio.run(republish(sys.argv[2], sys.argv[3]))
    elif sys.argv[1:2] == ["lag"] and len(sys.argv) == 3:
        asyncio.run(lag(sys.argv[2]))
    else:
        sys.exit(__doc__)
