#!/usr/bin/env python3
# An audience member of a large room, by WebSocket: counts the messages and bytes it receives.
# Usage: observer.py NODE_URL ROOM SECONDS   (the node in development mode: tokens from /dev/token;
# needs `pip install websockets`). Prints one JSON line. BENCHMARKS.md, "Large rooms".
import asyncio, json, sys, time, urllib.request
import websockets
node, room, secs = sys.argv[1], sys.argv[2], float(sys.argv[3])
tok = json.load(urllib.request.urlopen(f"{node}/dev/token?room={room}&identity=observer-{int(time.time())}&publish=false"))["token"]
async def main():
    async with websockets.connect(node.replace("http", "ws") + f"/rtc?access_token={tok}", max_size=None) as ws:
        await ws.send(json.dumps({"type": "join", "auto_subscribe": False}))
        start = time.time(); n = 0; b = 0; types = {}
        while time.time() - start < secs:
            try:
                m = await asyncio.wait_for(ws.recv(), timeout=max(0.1, secs - (time.time() - start)))
            except asyncio.TimeoutError:
                break
            n += 1; b += len(m)
            t = json.loads(m)["type"]; types[t] = types.get(t, 0) + 1
        el = time.time() - start
        print(json.dumps({"seconds": round(el, 1), "messages": n, "bytes": b, "bytes_per_minute": round(b / el * 60), "types": types}))
asyncio.run(main())
