// What the page shows, for tests and for debugging from the console: `window.sfu` (state and
// errors) and `window.sfuStats()` (read from the DOM: tiles, remote videos, chat messages,
// raised hands).
// The node's browser tests sample these (node/tests/browser/driver.mjs).

window.sfu = { state: "idle", errors: [] };

export function setState(state) {
  window.sfu.state = state;
}

export function addError(message) {
  window.sfu.errors.push(String(message));
}

window.sfuStats = async () => {
  let videoWidth = 0;
  let currentTime = 0;
  let remoteVideos = 0;
  for (const v of document.querySelectorAll("video")) {
    const tile = v.closest("[data-lk-local-participant]");
    const local = tile && tile.getAttribute("data-lk-local-participant") === "true";
    if (local) continue;
    remoteVideos += 1;
    videoWidth = Math.max(videoWidth, v.videoWidth);
    currentTime = Math.max(currentTime, v.currentTime);
  }
  const texts = (sel) => Array.from(document.querySelectorAll(sel), (e) => e.textContent.trim());
  return {
    tiles: document.querySelectorAll(".lk-participant-tile").length,
    localTiles: document.querySelectorAll('.lk-participant-tile[data-lk-local-participant="true"]').length,
    names: texts(".lk-participant-tile .lk-participant-name"),
    remoteVideos,
    videoWidth,
    currentTime,
    chat: texts(".lk-chat-entry .lk-message-body"),
    hands: texts(".hand-row"),
    handButton: texts(".hand-button"),
    focus: !!document.querySelector(".lk-focus-layout"),
    cameraButton: !!document.querySelector('.lk-control-bar [data-lk-source="camera"]'),
    prejoin: !!document.querySelector(".lk-prejoin"),
  };
};
