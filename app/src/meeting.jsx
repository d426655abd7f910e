// The meeting app the node serves at `/`: LiveKit's open-source React components against this
// node. `/?room=NAME` shows PreJoin (name, camera and microphone with device selection), then
// the conference; `&audience=1` joins without publish permission (the large-room model's
// audience: the stage and chat, no tile of one's own, a raise-hand button); `&host=1` joins
// with roomAdmin (development mode): the host lists raised hands and moves people between the
// stage and the audience; `&token=…` uses a token the
// application minted instead of the node's development endpoint.
import { useState } from "react";
import { createRoot } from "react-dom/client";
import { LiveKitRoom, PreJoin } from "@livekit/components-react";
import "@livekit/components-styles";
import { Conference } from "./conference.jsx";
import { addError, setState } from "./probe.js";
import { fetchToken, params, serverUrl } from "./token.js";

function RoomForm() {
  const [room, setRoom] = useState("");
  const go = (e) => {
    e.preventDefault();
    const q = params();
    q.set("room", room.trim());
    window.location.search = q.toString();
  };
  return (
    <div className="prejoin">
      <form className="room-form" onSubmit={go}>
        <input
          className="lk-form-control"
          placeholder="Room name"
          value={room}
          onChange={(e) => setRoom(e.target.value)}
          autoFocus
        />
        <button className="lk-button" type="submit" disabled={!room.trim()}>
          Open room
        </button>
      </form>
    </div>
  );
}

function Notice({ children }) {
  return <div className="notice">{children}</div>;
}

function Meeting({ room }) {
  const audience = params().get("audience") === "1";
  const host = params().get("host") === "1";
  const [choices, setChoices] = useState(null);
  const [token, setToken] = useState(null);
  const [error, setError] = useState(null);
  const [left, setLeft] = useState(false);

  const join = async (values) => {
    setError(null);
    setState("token");
    try {
      setToken(await fetchToken({ room, name: values.username, publish: !audience, admin: host }));
      setChoices(values);
      setState("connecting");
    } catch (e) {
      setError(e.message);
      addError(e.message);
      setState("failed");
    }
  };

  if (left) {
    return (
      <Notice>
        <p>You left {room}.</p>
        <button className="lk-button" onClick={() => window.location.reload()}>
          Join again
        </button>
      </Notice>
    );
  }
  if (!token) {
    return (
      <div className="prejoin">
        <div>
          <Notice>
            Room <b>{room}</b>
            {audience ? " (audience: you watch the stage)" : ""}
          </Notice>
          <PreJoin
            defaults={{ videoEnabled: !audience, audioEnabled: !audience }}
            onSubmit={join}
            onError={(e) => addError(e)}
          />
          {error && <Notice>{error}</Notice>}
        </div>
      </div>
    );
  }
  return (
    <LiveKitRoom
      serverUrl={serverUrl()}
      token={token}
      connect={true}
      video={
        !audience && choices.videoEnabled ? { deviceId: choices.videoDeviceId || undefined } : false
      }
      audio={
        !audience && choices.audioEnabled ? { deviceId: choices.audioDeviceId || undefined } : false
      }
      options={{ adaptiveStream: true, dynacast: true }}
      onConnected={() => setState("connected")}
      onDisconnected={() => {
        setState("disconnected");
        setLeft(true);
      }}
      onError={(e) => {
        addError(e.message);
        setError(e.message);
      }}
      style={{ height: "100%" }}
      data-lk-theme="default"
    >
      <Conference token={token} />
    </LiveKitRoom>
  );
}

function App() {
  const room = params().get("room");
  return room ? <Meeting room={room} /> : <RoomForm />;
}

createRoot(document.getElementById("root")).render(<App />);
