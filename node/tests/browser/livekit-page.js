// A LiveKit participant for the node's tests, run in a page after livekit-client's UMD build
// (window.LivekitClient). `lkJoin(url, token, publish)` connects with livekit-client, unchanged,
// and publishes the fake camera and microphone if asked; the driver samples `window.sfu` (state
// and errors) and `window.sfuStats()` (what this participant receives and sees of the others).
(() => {
  let LK = null;
  window.sfu = { state: "idle", errors: [] };
  const seen = { joinMs: null, connectedMs: null, firstFrameMs: null, events: [] };
  let room = null;
  let started = 0;
  const videos = new Map(); // track sid -> <video>

  // When each event was first seen (wall clock, to compare pages).
  const at = {};
  function note(e) {
    if (!(e in at)) at[e] = Date.now();
    seen.events.push(e);
    if (seen.events.length > 200) seen.events.shift();
  }

  window.lkJoin = async (url, token, publish, options) => {
    // The driver may add this script before the UMD build has run.
    while (!window.LivekitClient) await new Promise((r) => setTimeout(r, 20));
    LK = window.LivekitClient;
    started = performance.now();
    room = new LK.Room({ adaptiveStream: false, dynacast: true, ...(options || {}) });
    window.lkRoom = room;
    room
      .on(LK.RoomEvent.TrackSubscribed, (track, pub, participant) => {
        note(`subscribed ${participant.identity} ${pub.source}`);
        if (track.kind === "video") {
          const v = track.attach();
          v.muted = true;
          document.body.appendChild(v);
          videos.set(pub.trackSid, v);
          if (v.requestVideoFrameCallback) {
            const first = () => {
              if (seen.firstFrameMs === null) seen.firstFrameMs = performance.now() - started;
            };
            v.requestVideoFrameCallback(first);
          }
        } else {
          document.body.appendChild(track.attach());
        }
      })
      .on(LK.RoomEvent.TrackUnsubscribed, (track, pub) => {
        track.detach().forEach((e) => e.remove());
        videos.delete(pub.trackSid);
      })
      .on(LK.RoomEvent.TrackMuted, (pub, p) => note(`muted ${p.identity} ${pub.source}`))
      .on(LK.RoomEvent.TrackUnmuted, (pub, p) => note(`unmuted ${p.identity} ${pub.source}`))
      .on(LK.RoomEvent.ParticipantConnected, (p) => note(`joined ${p.identity}`))
      .on(LK.RoomEvent.ParticipantDisconnected, (p) => note(`left ${p.identity}`))
      .on(LK.RoomEvent.ActiveSpeakersChanged, (s) => {
        // Who speaks, in no order (the order changes with every level update).
        const who = `speakers ${s.map((p) => p.identity).sort().join(",")}`;
        if (seen.lastSpeakers !== who) note(who);
        seen.lastSpeakers = who;
      })
      .on(LK.RoomEvent.ParticipantMetadataChanged, (_, p) => note(`metadata ${p.identity} ${p.metadata}`))
      .on(LK.RoomEvent.ParticipantNameChanged, (name, p) => note(`name ${p.identity} ${name}`))
      .on(LK.RoomEvent.ParticipantAttributesChanged, (changed, p) =>
        note(`attributes ${p.identity} ${JSON.stringify(changed)}`),
      )
      .on(LK.RoomEvent.DataReceived, (payload, p, kind, topic) =>
        note(`data ${p ? p.identity : "?"} ${topic || ""} ${new TextDecoder().decode(payload)}`),
      )
      // A resume (the signaling connection alone is re-established) against a full reconnection.
      .on(LK.RoomEvent.SignalReconnecting, () => note("signal-reconnecting"))
      .on(LK.RoomEvent.Reconnecting, () => note("reconnecting"))
      .on(LK.RoomEvent.Reconnected, () => note("reconnected"))
      .on(LK.RoomEvent.Disconnected, (reason) => {
        window.sfu.state = "disconnected";
        note(`disconnected ${reason}`);
      });
    window.sfu.state = "connecting";
    try {
      await room.connect(url, token, { autoSubscribe: true });
      seen.joinMs = performance.now() - started;
      window.sfu.state = "connected";
      if (publish) {
        await room.localParticipant.enableCameraAndMicrophone();
      }
      seen.connectedMs = performance.now() - started;
      window.sfu.state = publish ? "published" : "connected";
    } catch (e) {
      window.sfu.state = "failed";
      window.sfu.errors.push(`${e && e.message ? e.message : e} (status ${e && e.status})`);
    }
  };

  // Runs `call(room)` (a promise) and notes how it ended: `done NAME` or `failed NAME REASON`.
  window.lkTry = (name, call) => {
    at[`start ${name}`] = Date.now();
    return call(room).then(
      () => note(`done ${name}`),
      (e) => note(`failed ${name} ${e && (e.reasonName || e.message)}`),
    );
  };

  window.sfuStats = async () => {
    if (!room) return null;
    let framesDecoded = 0;
    let videoWidth = 0;
    let currentTime = 0;
    let audioPackets = 0;
    const remote = [];
    for (const p of room.remoteParticipants.values()) {
      const tracks = [];
      for (const pub of p.trackPublications.values()) {
        tracks.push({ source: pub.source, muted: pub.isMuted, subscribed: pub.isSubscribed });
        const t = pub.track;
        if (!t || !t.receiver) continue;
        const stats = await t.receiver.getStats();
        stats.forEach((s) => {
          if (s.type !== "inbound-rtp") return;
          if (s.kind === "video") framesDecoded += s.framesDecoded || 0;
          if (s.kind === "audio") audioPackets += s.packetsReceived || 0;
        });
        const v = videos.get(pub.trackSid);
        if (v) {
          videoWidth = Math.max(videoWidth, v.videoWidth);
          currentTime = Math.max(currentTime, v.currentTime);
        }
      }
      remote.push({
        identity: p.identity,
        name: p.name,
        metadata: p.metadata,
        attributes: p.attributes,
        quality: p.connectionQuality,
        tracks,
      });
    }
    // What this participant sends: video packets, and its publisher connection's pair.
    let videoSent = 0;
    for (const pub of room.localParticipant.trackPublications.values()) {
      const t = pub.track;
      if (!t || !t.sender || t.kind !== "video") continue;
      (await t.sender.getStats()).forEach((s) => {
        if (s.type === "outbound-rtp") videoSent += s.packetsSent || 0;
      });
    }
    return {
      videoSent,
      framesDecoded,
      videoWidth,
      currentTime,
      audioPackets,
      remote,
      speaking: room.activeSpeakers.map((p) => p.identity),
      numParticipants: room.numParticipants,
      joinMs: seen.joinMs,
      publishedMs: seen.connectedMs,
      firstFrameMs: seen.firstFrameMs,
      events: seen.events,
      at,
      local: room.localParticipant.identity,
      sid: room.localParticipant.sid,
      quality: room.localParticipant.connectionQuality,
      published: Array.from(room.localParticipant.trackPublications.values()).map((p) => ({
        sid: p.trackSid,
        source: p.source,
        muted: p.isMuted,
      })),
    };
  };
})();
