//! Keeping a publisher's simulcast layers bound across a renegotiation.
//!
//! webrtc-rs (0.21) rebuilds every receiving track from the remote description at each
//! negotiation (`start_rtp`); for a simulcast section (`a=rid`) that means forgetting which SSRC
//! each layer arrived on, to be learned again from the MID and RID header extensions of the
//! next packets. Browsers stop sending those extensions once the SSRC was acknowledged by a
//! receiver report, so after any renegotiation of the publisher connection (LiveKit's resume
//! restarts ICE with one; a screen share added later is another) webrtc-rs drops every packet
//! of the layers it already had: the track's video stops while its audio goes on.
//!
//! So a renegotiation offer is given to webrtc-rs without the simulcast description of the
//! sections whose layers it already receives (their `a=rid`, `a=simulcast`, `a=msid` and
//! `a=ssrc` lines: without a track id the section describes no track and its receiver is left
//! as it is), and the answer gets the section's simulcast lines back, as webrtc-rs would have
//! written them (`a=rid:ID recv` for each layer offered, `a=simulcast:recv` with the offer's
//! list), so that the browser goes on sending every layer.

/// A media section whose simulcast description was held back from webrtc-rs.
#[derive(Debug, PartialEq)]
pub struct Held {
    mid: String,
    rids: Vec<String>,
    /// The offer's `a=simulcast:send` list (`q;h;f`).
    list: String,
}

/// The sections of `sdp` (an offer), split at `m=` lines; the first is the session part.
fn sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = vec![Vec::new()];
    for line in sdp.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("m=") {
            out.push(Vec::new());
        }
        if let Some(last) = out.last_mut() {
            last.push(line);
        }
    }
    out
}

fn value<'a>(section: &[&'a str], prefix: &str) -> Option<&'a str> {
    section.iter().find_map(|l| l.strip_prefix(prefix))
}

fn join(sections: &[Vec<&str>]) -> String {
    let mut sdp = String::new();
    for line in sections.iter().flatten().filter(|l| !l.is_empty()) {
        sdp.push_str(line);
        sdp.push_str("\r\n");
    }
    sdp
}

/// Takes the simulcast description out of the sections of `offer` whose track `bound` says
/// webrtc-rs already receives with these layers (`bound(track id, rids)`).
pub fn hold_bound(offer: &str, bound: impl Fn(&str, &[String]) -> bool) -> (String, Vec<Held>) {
    let mut held = Vec::new();
    let mut out = sections(offer);
    for section in out.iter_mut().skip(1) {
        let rids: Vec<String> = section
            .iter()
            .filter_map(|l| l.strip_prefix("a=rid:"))
            .filter_map(|r| r.split(' ').next())
            .map(str::to_owned)
            .collect();
        let track = value(section, "a=msid:").and_then(|m| m.split(' ').nth(1));
        let (Some(mid), Some(track), Some(list)) = (
            value(section, "a=mid:"),
            track,
            value(section, "a=simulcast:send "),
        ) else {
            continue;
        };
        if rids.is_empty() || !bound(track, &rids) {
            continue;
        }
        held.push(Held {
            mid: mid.to_owned(),
            rids,
            list: list.split(' ').next().unwrap_or("").to_owned(),
        });
        section.retain(|l| {
            ![
                "a=rid:",
                "a=simulcast:",
                "a=msid:",
                "a=ssrc:",
                "a=ssrc-group:",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        });
    }
    if held.is_empty() {
        return (offer.to_owned(), held);
    }
    (join(&out), held)
}

/// Gives the answer's sections their simulcast lines back (see [`hold_bound`]).
pub fn restore(answer: &str, held: &[Held]) -> String {
    if held.is_empty() {
        return answer.to_owned();
    }
    let mut out: Vec<Vec<String>> = sections(answer)
        .into_iter()
        .map(|s| s.into_iter().map(str::to_owned).collect())
        .collect();
    for section in out.iter_mut().skip(1) {
        let mid = section.iter().find_map(|l| l.strip_prefix("a=mid:"));
        let Some(h) = held.iter().find(|h| Some(h.mid.as_str()) == mid) else {
            continue;
        };
        section.extend(h.rids.iter().map(|r| format!("a=rid:{r} recv")));
        section.push(format!("a=simulcast:recv {}", h.list));
    }
    let mut sdp = String::new();
    for line in out.iter().flatten().filter(|l| !l.is_empty()) {
        sdp.push_str(line);
        sdp.push_str("\r\n");
    }
    sdp
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=ice-ufrag:new1\r\na=sendonly\r\n\
        a=msid:s1 mic\r\na=ssrc:11 msid:s1 mic\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=ice-ufrag:new1\r\na=sendonly\r\n\
        a=msid:s1 cam\r\na=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n\
        a=simulcast:send q;h;f\r\n";

    #[test]
    fn bound_layers_are_held_back_and_answered_as_before() {
        let (offer, held) = hold_bound(OFFER, |track, rids| track == "cam" && rids.len() == 3);
        assert_eq!(held.len(), 1);
        assert!(
            offer.contains("a=msid:s1 mic\r\na=ssrc:11 msid:s1 mic"),
            "audio untouched"
        );
        assert!(
            offer.contains("a=ice-ufrag:new1"),
            "the ICE restart goes through"
        );
        let video = &offer[offer.find("m=video").unwrap()..];
        assert!(
            !video.contains("a=rid") && !video.contains("a=msid") && !video.contains("a=simulcast")
        );
        assert!(video.contains("a=mid:1\r\n") && video.contains("a=sendonly"));
        let answer = "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\na=recvonly\r\nm=video 9 X 96\r\na=mid:1\r\na=recvonly\r\n";
        let restored = restore(answer, &held);
        assert!(restored.ends_with(
            "a=mid:1\r\na=recvonly\r\na=rid:q recv\r\na=rid:h recv\r\na=rid:f recv\r\na=simulcast:recv q;h;f\r\n"
        ), "{restored}");
        assert!(restored.contains("a=mid:0\r\na=recvonly\r\nm=video"));
    }

    #[test]
    fn new_or_changed_layers_are_left_to_webrtc_rs() {
        let (offer, held) = hold_bound(OFFER, |_, _| false);
        assert!(held.is_empty());
        assert_eq!(offer, OFFER);
        assert_eq!(restore("v=0\r\n", &held), "v=0\r\n");
    }
}
