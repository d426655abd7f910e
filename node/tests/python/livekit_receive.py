"""Joins a room with LiveKit's Python SDK (PyPI `livekit`, unchanged), subscribes to the first
remote video track and counts the frames it decodes. Prints one JSON line:
{"frames": N, "width": W, "height": H, "identities": [...], "join_ms": T, "subscribed_ms": T,
"first_frame_ms": T} (times from the start of the join).

usage: python livekit_receive.py WS_URL TOKEN SECONDS
"""

import asyncio
import json
import sys
import time

from livekit import rtc


async def main(url: str, token: str, seconds: float) -> dict:
    room = rtc.Room()
    seen = {
        "frames": 0,
        "width": 0,
        "height": 0,
        "identities": [],
        "join_ms": None,
        "subscribed_ms": None,
        "first_frame_ms": None,
    }
    video = asyncio.get_running_loop().create_future()

    @room.on("track_subscribed")
    def on_track(track, publication, participant):
        if track.kind == rtc.TrackKind.KIND_VIDEO and not video.done():
            video.set_result(track)

    started = time.monotonic()
    await room.connect(url, token, rtc.RoomOptions(auto_subscribe=True))
    seen["join_ms"] = (time.monotonic() - started) * 1000
    seen["identities"] = sorted(p.identity for p in room.remote_participants.values())
    track = await asyncio.wait_for(video, timeout=seconds)
    seen["subscribed_ms"] = (time.monotonic() - started) * 1000
    stream = rtc.VideoStream(track)

    async def count():
        async for event in stream:
            if seen["frames"] == 0:
                seen["first_frame_ms"] = (time.monotonic() - started) * 1000
            seen["frames"] += 1
            seen["width"] = event.frame.width
            seen["height"] = event.frame.height

    try:
        await asyncio.wait_for(count(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
    await stream.aclose()
    await room.disconnect()
    return seen


if __name__ == "__main__":
    out = asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
    print(json.dumps(out), flush=True)
