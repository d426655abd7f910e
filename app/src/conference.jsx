// The conference view: LiveKit's `VideoConference` prefab rebuilt from the same components
// (GridLayout, FocusLayout, CarouselLayout, ParticipantTile, ControlBar, Chat) with one change:
// participants who may not publish (the large-room model's audience, oneself included) get no
// placeholder tile, so an audience member sees the stage and not an empty tile of their own.
import { useEffect, useRef, useState } from "react";
import { RoomEvent, Track } from "livekit-client";
import { isEqualTrackRef, isTrackReference } from "@livekit/components-core";
import {
  CarouselLayout,
  Chat,
  ConnectionStateToast,
  ControlBar,
  FocusLayout,
  FocusLayoutContainer,
  GridLayout,
  LayoutContextProvider,
  ParticipantTile,
  RoomAudioRenderer,
  useCreateLayoutContext,
  useLocalParticipantPermissions,
  usePinnedTracks,
  useTracks,
} from "@livekit/components-react";
import { Hands } from "./hands.jsx";

/** Whether a track reference gets a tile: a real track, or a placeholder of a publisher. */
function onStage(ref) {
  if (isTrackReference(ref)) return true;
  const p = ref.participant.permissions;
  return !p || p.canPublish;
}

export function Conference({ token }) {
  const [widget, setWidget] = useState({ showChat: false, unreadMessages: 0 });
  const autoFocused = useRef(null);
  const permissions = useLocalParticipantPermissions();
  const tracks = useTracks(
    [
      { source: Track.Source.Camera, withPlaceholder: true },
      { source: Track.Source.ScreenShare, withPlaceholder: false },
    ],
    { updateOnlyOn: [RoomEvent.ActiveSpeakersChanged], onlySubscribed: false },
  ).filter(onStage);
  const layout = useCreateLayoutContext();
  const screenShares = tracks
    .filter(isTrackReference)
    .filter((t) => t.publication.source === Track.Source.ScreenShare);
  const focus = usePinnedTracks(layout)?.[0];
  const carousel = tracks.filter((t) => !isEqualTrackRef(t, focus));

  // A screen share takes the focus (the speaker layout) while no one chose another pin.
  const shareKey = screenShares
    .map((t) => `${t.publication.trackSid}_${t.publication.isSubscribed}`)
    .join();
  useEffect(() => {
    if (screenShares.some((t) => t.publication.isSubscribed) && autoFocused.current === null) {
      layout.pin.dispatch?.({ msg: "set_pin", trackReference: screenShares[0] });
      autoFocused.current = screenShares[0];
    } else if (
      autoFocused.current &&
      !screenShares.some(
        (t) => t.publication.trackSid === autoFocused.current?.publication?.trackSid,
      )
    ) {
      layout.pin.dispatch?.({ msg: "clear_pin" });
      autoFocused.current = null;
    }
  }, [shareKey]);

  const listening = permissions && !permissions.canPublish;
  return (
    <div className="lk-video-conference">
      <LayoutContextProvider value={layout} onWidgetChange={setWidget}>
        <div className="lk-video-conference-inner">
          {listening && (
            <div className="stage-note">
              {tracks.length ? "You are in the audience" : "You are in the audience; the stage is empty"}
            </div>
          )}
          {!focus ? (
            <div className="lk-grid-layout-wrapper">
              <GridLayout tracks={tracks}>
                <ParticipantTile />
              </GridLayout>
            </div>
          ) : (
            <div className="lk-focus-layout-wrapper">
              <FocusLayoutContainer>
                <CarouselLayout tracks={carousel}>
                  <ParticipantTile />
                </CarouselLayout>
                <FocusLayout trackRef={focus} />
              </FocusLayoutContainer>
            </div>
          )}
          <Hands token={token} />
          <ControlBar controls={{ chat: true, settings: false }} />
        </div>
        <Chat style={{ display: widget.showChat ? "grid" : "none" }} />
      </LayoutContextProvider>
      <RoomAudioRenderer />
      <ConnectionStateToast />
    </div>
  );
}
